from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render

from tenants.models import Role


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Send each role to its own start page."""
    if request.role is None and request.user.is_superuser:
        return redirect("admin:index")
    context = {"is_admin": request.role == Role.ADMIN, "simulator_enabled": settings.KEYPAD_SIMULATOR_ENABLED}
    return render(request, "home.html", context)


def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@login_required
def keepalive(request: HttpRequest) -> HttpResponse:
    """The live page's sign of activity; IdleSessionMiddleware has already noted it."""
    return HttpResponse(status=204)
