"""The agent's live payment page, its start page, and the supervisors' live list.

Thin views: the session model moves the state, securepay.payment starts the
charge, securepay.live tells pages and the media worker. No view ever sees a
card digit: step 2 shows what the socket brings (lengths and validity only).
"""

from __future__ import annotations

from functools import wraps

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from media.capture import FIELDS
from securepay.agent_messages import agent_message_labels
from securepay.forms import details_form_class, session_details_from_form
from securepay.models import BreakReason, IllegalTransition, PaymentSession, Status
from securepay.payment import PaymentNotReady, request_payment
from tenants.access import role_required
from tenants.models import PageTemplate, Role
from tenants.scoping import get_for_tenant, scoped

CARD_STEP_STATUSES = frozenset({Status.CARD_ENTRY, Status.PROCESSING, Status.APPROVED, Status.DECLINED, Status.ERROR})
CARD_FIELD_LABELS = {
    "pan": gettext_lazy("Card number"),
    "expiry": gettext_lazy("Expiry (MMYY)"),
    "cvv": gettext_lazy("Security code (CVV)"),
}
CARD_HINTS = {
    "luhn": gettext_lazy("This card number is not valid: ask the caller to key it again."),
    "brand_not_accepted": gettext_lazy("This card brand is not accepted here."),
    "expired": gettext_lazy("This card has expired."),
    "month": gettext_lazy("This is not a month (01 to 12)."),
    "length": gettext_lazy("Wrong length for this card."),
}


def tenant_language(view):
    """The tenant's default language until the user picks one in the selector."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if settings.LANGUAGE_COOKIE_NAME not in request.COOKIES and request.tenant is not None:
            translation.activate(request.tenant.default_locale)
            request.LANGUAGE_CODE = translation.get_language()
        return view(request, *args, **kwargs)

    return wrapper


def actor(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


class NewPaymentForm(forms.Form):
    template = forms.ModelChoiceField(queryset=PageTemplate.objects.none(), label=gettext_lazy("Payment page"))

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["template"].queryset = scoped(PageTemplate, tenant)
        self.fields["template"].empty_label = None


@role_required(Role.AGENT)
@tenant_language
def agent_home(request: HttpRequest) -> HttpResponse:
    """Start a new payment; the agent's open sessions."""
    form = NewPaymentForm(request.POST or None, tenant=request.tenant)
    if request.method == "POST" and form.is_valid():
        session = PaymentSession.open_for(
            tenant=request.tenant, template=form.cleaned_data["template"], actor=actor(request), agent=request.user
        )
        return redirect("agent-session", session.pk)
    open_sessions = (
        PaymentSession.objects.for_tenant(request.tenant).open().filter(agent=request.user).select_related("template")
    )
    return render(request, "agent/home.html", {"form": form, "open_sessions": open_sessions})


def _session_page(request: HttpRequest, session: PaymentSession, details_form: forms.Form | None = None
                  ) -> HttpResponse:
    card_step = session.status in CARD_STEP_STATUSES
    if not card_step and details_form is None:
        details_form = details_form_class(session.template, request.LANGUAGE_CODE)(initial=session.details)
    return render(
        request,
        "agent/session.html",
        {
            "session": session,
            "step": "card" if card_step else "details",
            "details_form": details_form,
            "card_fields": [(name, CARD_FIELD_LABELS[name]) for name in FIELDS],
            "page_labels": {
                "statuses": {value: str(label) for value, label in Status.choices},
                "break_reasons": {value: str(label) for value, label in BreakReason.choices},
                "hints": {code: str(text) for code, text in CARD_HINTS.items()},
                "secured": _("Secured"),
                "not_secured": _("Not secured"),
                "approved": _("Approved"),
                "reference": _("Gateway reference"),
                "declined": _("Declined"),
                "error": _("Not processed"),
                "keys_refused": _("Keys ignored (call not secured, or card not being keyed): %(count)s"),
                "connection_lost": _("Connection lost. Reconnecting…"),
                "agent_messages": agent_message_labels(),
            },
            "home_url": reverse("agent-home"),
        },
    )


def _agent_session(request: HttpRequest, session_id) -> PaymentSession:
    return get_for_tenant(PaymentSession.objects.select_related("template", "tenant"), request.tenant, pk=session_id)


@role_required(Role.AGENT)
@tenant_language
def agent_session(request: HttpRequest, session_id) -> HttpResponse:
    session = _agent_session(request, session_id)
    if session.status == Status.ENDED:
        messages.info(request, _("Session %(code)s has ended.") % {"code": session.code})
        return redirect("agent-home")
    if session.status == Status.CREATED:
        session.open_details(actor(request))
    return _session_page(request, session)


@require_POST
@role_required(Role.AGENT)
@tenant_language
def agent_session_details(request: HttpRequest, session_id) -> HttpResponse:
    """Step 1 -> Next: customer details saved, card entry opens."""
    session = _agent_session(request, session_id)
    if session.status != Status.DETAILS:
        return redirect("agent-session", session.pk)
    form = details_form_class(session.template, request.LANGUAGE_CODE)(request.POST)
    if not form.is_valid():
        return _session_page(request, session, details_form=form)
    details, amount_minor = session_details_from_form(form)
    session.start_card_entry(actor(request), details=details, amount_minor=amount_minor)
    return redirect("agent-session", session.pk)


@require_POST
@role_required(Role.AGENT)
@tenant_language
def agent_session_process(request: HttpRequest, session_id) -> HttpResponse:
    session = _agent_session(request, session_id)
    try:
        request_payment(session, actor(request))
    except PaymentNotReady as refusal:
        messages.error(request, refusal.message)
    except IllegalTransition:
        messages.error(request, _("This payment is not waiting for a card."))
    return redirect("agent-session", session.pk)


@require_POST
@role_required(Role.AGENT)
@tenant_language
def agent_session_back(request: HttpRequest, session_id) -> HttpResponse:
    """After a decline or error: key a card again. During card entry: back to the details."""
    session = _agent_session(request, session_id)
    try:
        if session.status in (Status.DECLINED, Status.ERROR):
            session.start_card_entry(actor(request))
        else:
            session.back_to_details(actor(request))
    except IllegalTransition:
        messages.error(request, _("The payment cannot go back now."))
    return redirect("agent-session", session.pk)


@require_POST
@role_required(Role.AGENT)
@tenant_language
def agent_session_end(request: HttpRequest, session_id) -> HttpResponse:
    session = _agent_session(request, session_id)
    try:
        session.end(actor(request))
    except IllegalTransition:
        messages.error(request, _("The session cannot end while a payment is being processed."))
        return redirect("agent-session", session.pk)
    messages.info(request, _("Session %(code)s has ended.") % {"code": session.code})
    return redirect("agent-home")


@role_required(Role.SUPERVISOR)
@tenant_language
def live_sessions(request: HttpRequest) -> HttpResponse:
    """Supervisors: the tenant's open sessions (the page polls itself)."""
    sessions = (
        PaymentSession.objects.for_tenant(request.tenant).open().select_related("agent", "template").order_by("code")
    )
    return render(request, "agent/live.html", {"sessions": sessions})
