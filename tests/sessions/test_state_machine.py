"""The payment session's life cycle: every legal move, every illegal one, the audit trail, the secure state."""

from __future__ import annotations

import pytest

from securepay.models import (
    TRANSITIONS,
    BreakReason,
    IllegalTransition,
    PaymentSession,
    SecureState,
    SessionEvent,
    Status,
)
from tests.live.conftest import AGENT_ACTOR, open_session

ACTOR = "user:alpha-agent"

# The one method that asks for each target status.
MOVES = {
    Status.DETAILS: lambda s: s.open_details(ACTOR),
    Status.CARD_ENTRY: lambda s: s.start_card_entry(ACTOR),
    Status.PROCESSING: lambda s: s.start_processing(ACTOR),
    Status.APPROVED: lambda s: s.record_result(Status.APPROVED, ACTOR),
    Status.DECLINED: lambda s: s.record_result(Status.DECLINED, ACTOR),
    Status.ERROR: lambda s: s.record_result(Status.ERROR, ACTOR),
    Status.ENDED: lambda s: s.end(ACTOR),
}
LEGAL = [(before, after) for before, targets in TRANSITIONS.items() for after in targets]
ILLEGAL = [(before, after) for before in Status.values for after in MOVES if after not in TRANSITIONS[before]]


def session_in(world, status: str) -> PaymentSession:
    session = open_session(world)
    PaymentSession.objects.filter(pk=session.pk).update(status=status)
    session.refresh_from_db()
    return session


def test_a_new_session_is_created_unsecured_with_a_created_event(alpha):
    session = open_session(alpha)
    assert (session.status, session.secure_state, session.break_reason) == (
        Status.CREATED, SecureState.UNSECURED, BreakReason.NOT_LINKED,
    )
    event = SessionEvent.objects.get(session=session)
    assert (event.actor, event.kind, event.from_state, event.to_state) == (AGENT_ACTOR, "created", "", Status.CREATED)


@pytest.mark.parametrize(("before", "after"), LEGAL)
def test_every_legal_move_changes_status_and_writes_an_event(alpha, before, after):
    session = session_in(alpha, before)
    MOVES[after](session)
    assert session.status == after
    assert PaymentSession.objects.get(pk=session.pk).status == after
    event = session.events.last()
    assert (event.actor, event.kind, event.from_state, event.to_state) == (ACTOR, "transition", before, after)
    assert event.tenant_id == alpha.tenant.pk


@pytest.mark.parametrize(("before", "after"), ILLEGAL)
def test_every_illegal_move_raises_and_changes_nothing(alpha, before, after):
    session = session_in(alpha, before)
    events_before = session.events.count()
    with pytest.raises(IllegalTransition) as raised:
        MOVES[after](session)
    assert (raised.value.current, raised.value.wanted) == (before, after)
    assert PaymentSession.objects.get(pk=session.pk).status == before
    assert session.events.count() == events_before


def test_a_whole_payment_with_a_decline_and_a_retry(alpha):
    session = open_session(alpha)
    session.open_details(ACTOR)
    session.start_card_entry(ACTOR, details={"first_name": "Ada"}, amount_minor=1250)
    session.start_processing(ACTOR)
    session.record_result(Status.DECLINED, "gateway-task", "insufficient_funds")
    session.start_card_entry(ACTOR)
    session.start_processing(ACTOR)
    session.record_result(Status.APPROVED, "gateway-task")
    session.end(ACTOR)
    assert (session.details, session.amount_minor, session.amount_display) == ({"first_name": "Ada"}, 1250, "12.50 GBP")
    assert [e.to_state for e in session.events.filter(kind="transition")] == [
        "details", "card_entry", "processing", "declined", "card_entry", "processing", "approved", "ended",
    ]
    assert session.events.get(to_state="declined").detail == "insufficient_funds"
    assert session.ended_at is not None


def test_record_result_accepts_only_outcomes(alpha):
    session = session_in(alpha, Status.PROCESSING)
    with pytest.raises(ValueError):
        session.record_result(Status.ENDED, ACTOR)
    assert PaymentSession.objects.get(pk=session.pk).status == Status.PROCESSING


def test_secure_state_moves_with_reasons_and_audit(alpha):
    session = open_session(alpha)
    session.mark_secured("media-worker")
    assert session.is_secured and session.break_reason == "" and session.secured_at is not None
    session.mark_unsecured(BreakReason.HOLD, "media-worker")
    assert (session.secure_state, session.break_reason) == (SecureState.UNSECURED, BreakReason.HOLD)
    secure_events = list(session.events.filter(kind="secure").values_list("actor", "from_state", "to_state", "detail"))
    assert secure_events == [
        ("media-worker", "unsecured", "secured", ""),
        ("media-worker", "secured", "unsecured", "hold"),
    ]


def test_unknown_break_reason_is_refused(alpha):
    session = open_session(alpha)
    session.mark_secured("media-worker")
    with pytest.raises(ValueError):
        session.mark_unsecured("coffee_break", "media-worker")
    assert PaymentSession.objects.get(pk=session.pk).is_secured


def test_end_unsecures_and_an_ended_session_cannot_be_secured(alpha):
    session = open_session(alpha)
    session.mark_secured("media-worker")
    session.end(ACTOR)
    assert (session.status, session.secure_state) == (Status.ENDED, SecureState.UNSECURED)
    events_before = session.events.count()
    with pytest.raises(IllegalTransition):
        session.mark_secured("media-worker")
    assert not PaymentSession.objects.get(pk=session.pk).is_secured
    assert session.events.count() == events_before
