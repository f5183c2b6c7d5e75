from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth import logout
from django.shortcuts import redirect
from django.urls import reverse

from tenants.models import Role
from tenants.scoping import role_of_user, tenant_of_user


class TenantMiddleware:
    """Sets request.tenant and request.role from the logged-in user's membership."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.tenant = tenant_of_user(request.user)
        request.role = role_of_user(request.user)
        return self.get_response(request)


class IdleSessionMiddleware:
    """Logs an agent out after AGENT_IDLE_TIMEOUT_SECONDS without a request.

    Agents sit at shared desks in a contact centre; an abandoned session must
    not stay able to take payments. The live page pings while it is open.
    """

    SESSION_KEY = "_last_activity"

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if getattr(request, "role", None) == Role.AGENT:
            now = time.time()
            last = request.session.get(self.SESSION_KEY)
            if last is not None and now - last > settings.AGENT_IDLE_TIMEOUT_SECONDS:
                logout(request)
                request.tenant = request.role = None
                return redirect(reverse("login") + "?idle=1")
            request.session[self.SESSION_KEY] = now
        return self.get_response(request)
