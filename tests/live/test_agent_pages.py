"""The agent's pages over HTTP: start page, steps 1 and 2, process, back, end, live list."""

from __future__ import annotations

import io

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.management import call_command
from django.urls import reverse

from securepay.live import MEDIA_GROUP, MediaHub, hub, media_command
from securepay.models import PaymentSession, Status
from securepay.vault import get_vault
from tenants.models import PageTemplate
from tests.live.conftest import FUTURE_EXPIRY, VISA_OK, key_card, open_session, session_in_card_entry
from tests.walls import wall_test

DECLINING = "4000000000000002"


def session_url(name: str, session: PaymentSession) -> str:
    return reverse(name, args=[session.pk])


def secured_with_card(world, pan: str = VISA_OK) -> PaymentSession:
    session = session_in_card_entry(world)
    hub.link(session.pk)
    key_card(session.pk, pan + FUTURE_EXPIRY + "123")
    return session


@wall_test("agent-home")
def test_start_page_creates_sessions_from_own_templates_only(alpha, beta):
    client = alpha.client_for("agent")
    template = PageTemplate.objects.get(tenant=alpha.tenant, slug="default")
    response = client.post(reverse("agent-home"), {"template": template.pk})
    session = PaymentSession.objects.get(tenant=alpha.tenant)
    assert response.status_code == 302 and response.url == session_url("agent-session", session)
    assert session.agent == alpha.agent and session.status == Status.CREATED
    assert session.code in client.get(reverse("agent-home")).content.decode()

    beta_client = beta.client_for("agent")
    response = beta_client.post(reverse("agent-home"), {"template": template.pk})
    assert response.status_code == 200 and response.context["form"].errors
    assert not PaymentSession.objects.filter(tenant=beta.tenant).exists()
    assert session.code not in beta_client.get(reverse("agent-home")).content.decode()
    assert alpha.client_for("supervisor").get(reverse("agent-home")).status_code == 403


@wall_test("agent-session")
def test_session_page_opens_step_one_and_is_walled(alpha, beta):
    session = open_session(alpha)
    response = alpha.client_for("agent").get(session_url("agent-session", session))
    assert response.status_code == 200
    session.refresh_from_db()
    assert session.status == Status.DETAILS
    html = response.content.decode()
    assert 'data-secure="unsecured"' in html and session.code in html
    assert html.count('class="required"') >= 3  # amount, first and last name
    assert beta.client_for("agent").get(session_url("agent-session", session)).status_code == 404
    assert beta.client_for("admin").get(session_url("agent-session", session)).status_code == 404


@wall_test("agent-session-details")
def test_next_validates_details_then_opens_card_entry(alpha, beta):
    session = open_session(alpha)
    client = alpha.client_for("agent")
    client.get(session_url("agent-session", session))
    url = session_url("agent-session-details", session)
    assert beta.client_for("agent").post(url, {"amount": "1", "first_name": "A", "last_name": "B"}).status_code == 404

    response = client.post(url, {"amount": "-3", "first_name": ""})
    assert response.status_code == 200
    assert {"amount", "first_name", "last_name"} <= set(response.context["details_form"].errors)
    response = client.post(url, {"amount": "12.50", "first_name": "Ada", "last_name": "Lovelace"})
    assert response.status_code == 302
    session.refresh_from_db()
    assert session.status == Status.CARD_ENTRY and session.amount_minor == 1250
    assert session.details["first_name"] == "Ada"
    page = client.get(session_url("agent-session", session)).content.decode()
    assert 'id="step-card"' in page and "12.50 GBP" in page


@wall_test("agent-session-process")
def test_process_needs_a_secured_call_and_a_card(alpha, beta, django_capture_on_commit_callbacks):
    session = session_in_card_entry(alpha)
    client = alpha.client_for("agent")
    url = session_url("agent-session-process", session)
    response = client.post(url, follow=True)
    assert "not secured" in response.content.decode()
    hub.link(session.pk)
    response = client.post(url, follow=True)
    assert "No complete card" in response.content.decode()
    key_card(session.pk, VISA_OK + FUTURE_EXPIRY + "123")
    assert beta.client_for("agent").post(url).status_code == 404
    session.refresh_from_db()
    assert session.status == Status.CARD_ENTRY and not session.attempts.exists()

    with django_capture_on_commit_callbacks(execute=True):  # the charge task is enqueued on commit
        assert client.post(url).status_code == 302
    session.refresh_from_db()
    attempt = session.attempts.get()
    assert session.status == Status.APPROVED
    assert (attempt.number, attempt.status, attempt.last4, attempt.brand) == (1, "approved", "4242", "visa")


@wall_test("agent-session-back")
def test_decline_then_back_clears_the_card_and_a_retry_is_approved(alpha, beta, django_capture_on_commit_callbacks):
    session = secured_with_card(alpha, DECLINING)
    client = alpha.client_for("agent")
    with django_capture_on_commit_callbacks(execute=True):
        client.post(session_url("agent-session-process", session))
    session.refresh_from_db()
    assert session.status == Status.DECLINED
    back = session_url("agent-session-back", session)
    assert beta.client_for("agent").post(back).status_code == 404

    hub.handle_command({})  # unknown session: ignored
    client.post(back)
    session.refresh_from_db()
    assert session.status == Status.CARD_ENTRY
    # The view's "clear" reaches the hub through the channel layer; apply it as the listener would.
    hub.handle_command({"session": str(session.pk), "command": "clear"})
    state = hub._captures[str(session.pk)].state()
    assert all(field["length"] == 0 for field in state["fields"].values())

    key_card(session.pk, VISA_OK + FUTURE_EXPIRY + "123")
    with django_capture_on_commit_callbacks(execute=True):
        client.post(session_url("agent-session-process", session))
    session.refresh_from_db()
    assert session.status == Status.APPROVED
    assert list(session.attempts.values_list("number", "status")) == [(1, "declined"), (2, "approved")]


def test_back_during_card_entry_returns_to_details_and_drops_the_keyed_card(
    alpha, django_capture_on_commit_callbacks
):
    session = secured_with_card(alpha)
    assert get_vault().has_card(session.pk)
    with django_capture_on_commit_callbacks(execute=True):
        alpha.client_for("agent").post(session_url("agent-session-back", session))
    session.refresh_from_db()
    assert session.status == Status.DETAILS
    # A card keyed for one amount must never be charged for another: Next starts empty.
    assert not get_vault().has_card(session.pk)
    hub.handle_command({"session": str(session.pk), "command": "clear"})  # as the listener would apply it
    assert not hub._captures[str(session.pk)].state()["ready"]


def test_ending_a_session_discards_its_card_even_with_no_worker_holding_it(alpha, django_capture_on_commit_callbacks):
    session = secured_with_card(alpha)
    hub._captures.clear()  # e.g. the media worker restarted: nobody holds the card entry
    with django_capture_on_commit_callbacks(execute=True):
        session.end("user:test")
    assert not get_vault().has_card(session.pk)


@wall_test("agent-session-end")
def test_end_closes_the_session_and_returns_to_the_start_page(alpha, beta):
    session = secured_with_card(alpha)
    url = session_url("agent-session-end", session)
    assert beta.client_for("agent").post(url).status_code == 404
    response = alpha.client_for("agent").post(url)
    assert response.status_code == 302 and response.url == reverse("agent-home")
    session.refresh_from_db()
    assert session.status == Status.ENDED and not session.is_secured
    hub.handle_command({"session": str(session.pk), "command": "end"})
    assert not hub.is_linked(session.pk)
    assert alpha.client_for("agent").get(session_url("agent-session", session)).status_code == 302


def test_no_card_digit_is_stored_or_rendered_after_a_payment(alpha, django_capture_on_commit_callbacks):
    session = secured_with_card(alpha)
    client = alpha.client_for("agent")
    with django_capture_on_commit_callbacks(execute=True):
        client.post(session_url("agent-session-process", session))
    assert PaymentSession.objects.get(pk=session.pk).status == Status.APPROVED
    page = client.get(session_url("agent-session", session)).content.decode()
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    for text in (page, dump.getvalue()):
        assert VISA_OK not in text and VISA_OK[:6] not in text and FUTURE_EXPIRY not in text


@wall_test("agent-live")
def test_live_list_shows_the_tenants_open_sessions_to_supervisors(alpha, beta):
    session = session_in_card_entry(alpha)
    page = alpha.client_for("supervisor").get(reverse("agent-live")).content.decode()
    assert session.code in page and "12.50 GBP" in page
    beta_page = beta.client_for("supervisor").get(reverse("agent-live"))
    assert beta_page.status_code == 200 and str(session.pk) not in beta_page.content.decode()
    assert alpha.client_for("agent").get(reverse("agent-live")).status_code == 403


def test_the_tenants_language_is_the_default_until_the_user_picks_one(alpha):
    alpha.tenant.default_locale = "fr"
    alpha.tenant.save()
    session = open_session(alpha)
    client = alpha.client_for("agent")
    assert "Suivant" in client.get(session_url("agent-session", session)).content.decode()
    client.cookies["django_language"] = "en"
    assert "Next" in client.get(session_url("agent-session", session)).content.decode()


def test_keys_count_only_while_the_page_is_at_card_entry(alpha, django_capture_on_commit_callbacks):
    session = open_session(alpha)
    session.open_details("user:test")
    hub.link(session.pk)  # the call is secured while the agent takes the customer's details
    key_card(session.pk, VISA_OK)
    capture = hub._captures[str(session.pk)]
    assert capture.state()["rejected_keys"] == 16
    session.start_card_entry("user:test", details={"first_name": "Ada"}, amount_minor=1250)
    assert capture.state()["fields"]["pan"]["length"] == 0  # nothing keyed during the details reached a field
    key_card(session.pk, VISA_OK + FUTURE_EXPIRY + "123")
    layer = get_channel_layer()
    worker_channel = async_to_sync(layer.new_channel)("media.hub.")
    async_to_sync(layer.group_add)(MEDIA_GROUP, worker_channel)  # what a media worker hears
    with django_capture_on_commit_callbacks(execute=True):
        alpha.client_for("agent").post(session_url("agent-session-process", session))
    session.refresh_from_db()
    assert session.status == Status.APPROVED
    submitted = async_to_sync(layer.receive)(worker_channel)
    assert (submitted["command"], submitted["session"]) == ("submitted", str(session.pk))
    hub.handle_command(submitted)  # as the worker's listener applies it
    assert set(capture._digits.values()) == {""}  # the CVV is not kept after the attempt
    assert capture.state()["fields"]["pan"]["length"] == 16  # the page still shows what was sent
    key_card(session.pk, "123")  # after the result: refused, nothing stored again
    assert capture.state()["rejected_keys"] == 19 and not get_vault().has_card(session.pk)
    session.end("user:test")  # its `end` command lost: the worker still holds the card entry
    key_card(session.pk, VISA_OK + FUTURE_EXPIRY + "123")
    assert capture.state()["rejected_keys"] == 42 and not get_vault().has_card(session.pk)


def claimed(session: PaymentSession, by: MediaHub) -> dict:
    """The `claimed` command `by` sent when it created its card entry for the session."""
    return media_command(session.pk, "claimed", hub=by.hub_id, claim=by._claims[str(session.pk)])


def test_a_new_card_entry_starts_empty_and_the_old_one_goes(alpha):
    session = secured_with_card(alpha)
    assert get_vault().has_card(session.pk)
    old_seq = hub._captures[str(session.pk)].state()["seq"]
    elsewhere = MediaHub()  # the session's new call is on another worker
    elsewhere.link(session.pk)
    assert not get_vault().has_card(session.pk)  # no card the page does not show can be charged
    assert elsewhere._captures[str(session.pk)].state()["seq"] > old_seq  # the page shows the new one
    elsewhere.handle_command(claimed(session, elsewhere))  # its own claim: kept
    hub.handle_command(claimed(session, elsewhere))  # as this worker's listener applies it
    assert str(session.pk) in elsewhere._captures and str(session.pk) not in hub._captures


def test_a_late_claim_leaves_a_newer_card_entry_alone(alpha):
    session = secured_with_card(alpha)
    elsewhere = MediaHub()
    elsewhere.link(session.pk)  # call B on another worker ...
    late = claimed(session, elsewhere)
    hub.release(session.pk)  # ... this worker hears that its call A lost the session,
    hub.link(session.pk)  # then A takes it back: a new card entry here
    hub.handle_command(late)  # B's claim arrives only now
    assert str(session.pk) in hub._captures
    elsewhere.handle_command(claimed(session, hub))
    assert str(session.pk) not in elsewhere._captures
