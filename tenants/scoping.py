"""The one tenant-scoping mechanism.

`request.tenant` is set by TenantMiddleware (browser users, from their
membership) or by ApiKeyAuthentication (integrations). Views, API views and
consumers fetch tenant-owned objects only through `get_for_tenant` or a
queryset's `for_tenant`, so another tenant's object is a 404, never a 403
that would confirm it exists.
"""

from __future__ import annotations

from typing import TypeVar

from django.core.exceptions import ValidationError
from django.db import models
from django.http import Http404

from tenants.models import Membership, Tenant

M = TypeVar("M", bound=models.Model)


def tenant_of_user(user) -> Tenant | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    membership = getattr(user, "membership", None) if _has_membership(user) else None
    return membership.tenant if membership else None


def role_of_user(user) -> str | None:
    if user is None or not getattr(user, "is_authenticated", False) or not _has_membership(user):
        return None
    return user.membership.role


def _has_membership(user) -> bool:
    try:
        user.membership  # noqa: B018 - attribute access performs the look-up
    except Membership.DoesNotExist:
        return False
    return True


def scoped(queryset_or_model: type[M] | models.QuerySet, tenant: Tenant | None) -> models.QuerySet:
    qs = (
        queryset_or_model
        if isinstance(queryset_or_model, models.QuerySet)
        else queryset_or_model._default_manager.all()
    )
    return qs.for_tenant(tenant) if hasattr(qs, "for_tenant") else qs.filter(tenant=tenant) if tenant else qs.none()


def get_for_tenant(queryset_or_model: type[M] | models.QuerySet, tenant: Tenant | None, **lookup) -> M:
    """The object of this tenant matching `lookup`, or Http404."""
    try:
        return scoped(queryset_or_model, tenant).get(**lookup)
    except (models.ObjectDoesNotExist, ValidationError, ValueError, TypeError) as exc:
        # A malformed id is as unknown as another tenant's: 404 either way.
        raise Http404("No such object") from exc
