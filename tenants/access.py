"""Role checks for views: agents take payments, supervisors watch, admins configure."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

from tenants.models import Role


def role_required(*roles: str):
    """Allow only logged-in tenant members with one of `roles` (admins always pass)."""
    allowed = set(roles) | {Role.ADMIN}

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if getattr(request, "tenant", None) is None or request.role not in allowed:
                raise PermissionDenied("Your role does not allow this page.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
