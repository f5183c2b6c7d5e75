"""The keypad simulator: a phone keypad in a browser page, for the demo and browser tests.

It stands in for the caller's phone and the telephony integration, and drives
the in-process media hub through the same calls call audio will (link,
break_link, press_key). Keys go straight to the hub's card capture: they are
never logged, stored or rendered. Routed only when KEYPAD_SIMULATOR_ENABLED.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from media.capture import CLEAR_KEY, DIGITS, END_KEY
from securepay.agent_views import tenant_language
from securepay.live import hub
from securepay.models import BreakReason, PaymentSession
from tenants.access import role_required
from tenants.models import Role
from tenants.scoping import get_for_tenant

ANY_ROLE = (Role.AGENT, Role.SUPERVISOR)  # admins always pass
KEYPAD_KEYS = DIGITS | {CLEAR_KEY, END_KEY}
# Call events the simulator offers, and the secure-state break each one means.
CALL_BREAKS = {"hold": BreakReason.HOLD, "hangup": BreakReason.HANGUP}


class CodeForm(forms.Form):
    code = forms.RegexField(regex=r"^\d{4}$", label=gettext_lazy("Session code"), max_length=4)


def _media_here() -> bool:
    return settings.MEDIA_WORKER_MODE == "inprocess"


def _open_session(request: HttpRequest, session_id) -> PaymentSession:
    return get_for_tenant(PaymentSession.objects.open(), request.tenant, pk=session_id)


@role_required(*ANY_ROLE)
@tenant_language
def simulator_home(request: HttpRequest) -> HttpResponse:
    """Key the 4-digit code of an open session to link the simulated call to it."""
    form = CodeForm(request.POST or None)
    status = 200
    if request.method == "POST" and _media_here() and form.is_valid():
        code = form.cleaned_data["code"]
        session = PaymentSession.objects.for_tenant(request.tenant).open().filter(code=code).first()
        if session is not None:
            hub.link(session.pk)
            return redirect("simulator-keypad", session.pk)
        form.add_error("code", _("No open session has this code."))
        status = 404
    return render(request, "simulator/code.html", {"form": form, "media_here": _media_here()}, status=status)


@role_required(*ANY_ROLE)
@tenant_language
def simulator_keypad(request: HttpRequest, session_id) -> HttpResponse:
    session = _open_session(request, session_id)
    return render(
        request,
        "simulator/keypad.html",
        {"session": session, "linked": hub.is_linked(session.pk), "rows": ["123", "456", "789", "*0#"]},
    )


@require_POST
@role_required(*ANY_ROLE)
def simulator_key(request: HttpRequest, session_id) -> HttpResponse:
    """One key press (POST body `key`). Answered without echoing it back."""
    session = _open_session(request, session_id)
    key = request.POST.get("key", "")
    if key not in KEYPAD_KEYS:
        return JsonResponse({"error": "bad_key"}, status=400)
    if not hub.press_key(session.pk, key):
        return JsonResponse({"error": "not_linked"}, status=409)
    return HttpResponse(status=204)


@require_POST
@role_required(*ANY_ROLE)
def simulator_call(request: HttpRequest, session_id) -> HttpResponse:
    """Call events: hold and hang-up break the secure state; unhold restores it."""
    session = _open_session(request, session_id)
    event = request.POST.get("event", "")
    if event == "unhold":
        hub.link(session.pk)
    elif event in CALL_BREAKS:
        hub.break_link(session.pk, CALL_BREAKS[event])
    else:
        return JsonResponse({"error": "bad_event"}, status=400)
    return redirect("simulator-home") if event == "hangup" else redirect("simulator-keypad", session.pk)
