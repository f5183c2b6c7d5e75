"""Signed launch links: a CRM builds the link itself, the agent clicks it, a session opens.

    GET /pay/launch/?tenant=<slug>&template=default&amount=12.50&first_name=Ada
        &reference=INV-1&agent=<username>&ts=<unix seconds>&sig=<hex>

Signature (the CRM computes the same):
  1. take every query parameter except `sig`, percent-decoded, values exactly
     as sent (no trimming); `tenant` and `ts` are required among them and no
     name may appear twice;
  2. sort them by name (code point order, which is UTF-8 byte order);
  3. join `name=value` pairs with `&`, e.g. "amount=12.50&tenant=acme&ts=1767225600";
  4. sig = lowercase hex HMAC-SHA256 of that string's UTF-8 bytes, keyed with
     the tenant's webhook secret (UTF-8).
A link is good for 5 minutes after `ts` and refused if `ts` is more than 60
seconds in the future. Parameters other than tenant, template, reference,
agent, callback_url, ts and sig are prefill, mapped like the API's `prefill`.

Only a logged-in agent or admin of that tenant may open it; to anyone else it
is the same invalid link as a forged one, so a link proves nothing about
another tenant. Nothing is created unless every check passes.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET

from securepay.api.serializers import PAYMENT_ROLES, callback_url_validator
from securepay.forms import PrefillInvalid, details_from_prefill
from securepay.models import PaymentSession
from tenants.models import PageTemplate, Tenant
from tenants.scoping import scoped

LAUNCH_MAX_AGE_SECONDS = 300
LAUNCH_MAX_FUTURE_SECONDS = 60
PENDING_LAUNCH_SESSION_KEY = "securepay.pending_launch"
CONTROL_PARAMS = frozenset({"tenant", "template", "reference", "agent", "callback_url", "ts", "sig"})


def canonical_launch_string(params: dict[str, str]) -> str:
    """The signed text: every parameter but `sig`, sorted by name, `name=value` joined by `&`."""
    return "&".join(f"{name}={params[name]}" for name in sorted(params) if name != "sig")


def launch_signature(tenant: Tenant, params: dict[str, str]) -> str:
    message = canonical_launch_string(params).encode("utf-8")
    return hmac.new(tenant.webhook_secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_launch_params(tenant: Tenant, params: dict, ts: int | None = None) -> str:
    """The query string of a launch link for `params`, with tenant, ts and sig added."""
    signed = {name: str(value) for name, value in params.items()}
    signed["tenant"] = tenant.slug
    signed["ts"] = str(int(time.time()) if ts is None else ts)
    signed["sig"] = launch_signature(tenant, signed)
    return urlencode(signed)


@dataclass
class LaunchRefused(Exception):
    status: int
    code: str
    message: str
    field_errors: dict[str, list[str]] | None = None


def invalid_link() -> LaunchRefused:
    return LaunchRefused(403, "invalid_link", _("This payment link is not valid. Ask the CRM for a new link."))


def verified_launch_params(query: QueryDict, request: HttpRequest, now: float | None = None) -> tuple[Tenant, dict]:
    """The link's tenant and parameters, once signature, freshness and the user's tenant check out."""
    if any(len(values) != 1 for _name, values in query.lists()):
        raise LaunchRefused(400, "malformed", _("This payment link repeats a parameter."))
    params = query.dict()
    tenant = Tenant.objects.filter(slug=params.get("tenant", "")).first()
    # One answer for a forged link, an unknown tenant and another tenant's user.
    if tenant is None or request.tenant != tenant or request.role not in PAYMENT_ROLES:
        raise invalid_link()
    if not hmac.compare_digest(launch_signature(tenant, params), params.get("sig", "")):
        raise invalid_link()
    if not params.get("ts", "").isdigit():
        raise invalid_link()
    age = (time.time() if now is None else now) - int(params["ts"])
    if age > LAUNCH_MAX_AGE_SECONDS:
        raise LaunchRefused(403, "expired", _("This payment link has expired. Open it again from the CRM."))
    if age < -LAUNCH_MAX_FUTURE_SECONDS:
        raise LaunchRefused(403, "not_yet_valid", _("This payment link is dated in the future. Check the CRM clock."))
    return tenant, params


def _session_fields(tenant: Tenant, params: dict, request: HttpRequest) -> dict:
    template = scoped(PageTemplate, tenant).filter(slug=params.get("template", "default")).first()
    if template is None:
        raise LaunchRefused(400, "unknown_template", _("This payment link names a payment page that does not exist."))
    agent_name = params.get("agent", "")
    if agent_name and agent_name != request.user.get_username():
        raise LaunchRefused(403, "other_agent", _("This payment link was made for another agent."))
    callback_url = params.get("callback_url", "")
    try:
        if callback_url:
            callback_url_validator()(callback_url)
        details, amount_minor = details_from_prefill(
            template, {name: value for name, value in params.items() if name not in CONTROL_PARAMS}
        )
    except ValidationError:
        raise LaunchRefused(400, "invalid_callback_url", _("This payment link has an unusable callback address."))
    except PrefillInvalid as exc:
        raise LaunchRefused(400, "invalid_prefill", _("This payment link has missing or invalid details."), exc.errors)
    return {
        "template": template,
        "details": details,
        "amount_minor": amount_minor,
        "currency": template.effective_currency,
        "reference": params.get("reference", ""),
        "callback_url": callback_url,
        "agent": request.user,
    }


@require_GET
def launch_session(request: HttpRequest) -> HttpResponse:
    """Open a session from a signed CRM link and take the agent to its live page."""
    if not request.user.is_authenticated:
        # The link's query may carry anything a CRM sent: keep it in the server-side
        # session across the log-in instead of echoing it in `next` (login page, logs).
        request.session[PENDING_LAUNCH_SESSION_KEY] = request.GET.urlencode()
        return redirect_to_login(reverse("session-launch") + "?resume=1")
    query = request.GET
    if request.GET.get("resume") == "1" and PENDING_LAUNCH_SESSION_KEY in request.session:
        query = QueryDict(request.session.pop(PENDING_LAUNCH_SESSION_KEY))
    try:
        tenant, params = verified_launch_params(query, request)
        # A reload or double click of the same link returns to the session it opened.
        opened_key = f"launch:{tenant.pk}:{params['sig']}"
        opened = cache.get(opened_key)
        if opened is not None:
            return redirect("agent-session", opened)
        fields = _session_fields(tenant, params, request)
    except LaunchRefused as refusal:
        # A refused link may carry anything a CRM sent, even card data: the page
        # (its language switcher echoes the full path) must not repeat the query.
        request.META["QUERY_STRING"] = ""
        return render(request, "launch_error.html", {"refusal": refusal}, status=refusal.status)
    session = PaymentSession.open_for(tenant=tenant, actor=f"user:{request.user.get_username()}", **fields)
    cache.set(opened_key, str(session.pk), LAUNCH_MAX_AGE_SECONDS + LAUNCH_MAX_FUTURE_SECONDS)
    return redirect("agent-session", session.pk)
