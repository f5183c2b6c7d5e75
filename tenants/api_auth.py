"""REST API authentication: tenant API keys as `Authorization: Bearer <key>`."""

from __future__ import annotations

from rest_framework import authentication, exceptions, permissions

from tenants.models import ApiKey, Role
from tenants.scoping import role_of_user, tenant_of_user


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0] != self.keyword:
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api key>'.")
        api_key = ApiKey.authenticate(parts[1])
        if api_key is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API key.")
        request._request.tenant = api_key.tenant
        request._request.role = None
        return (None, api_key)

    def authenticate_header(self, request):
        return self.keyword


def request_tenant(request):
    """The tenant of an API request, whichever way it authenticated."""
    if isinstance(request.auth, ApiKey):
        return request.auth.tenant
    return tenant_of_user(request.user)


class IsTenantMember(permissions.BasePermission):
    """An API key, or a logged-in user who belongs to a tenant."""

    message = "Authentication with a tenant API key or a tenant user is required."

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, ApiKey):
            return True
        return request_tenant(request) is not None


class IsIntegrationOrAdmin(permissions.BasePermission):
    """Integration keys and tenant admins: e.g. refunds."""

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, ApiKey):
            return True
        return role_of_user(request.user) == Role.ADMIN
