"""The worker under bad conditions, on real sockets: garbage, reordering, silence, a crash."""

from __future__ import annotations

import ast
import random
import socket

import pytest

from media.rtp import RtpPacket, is_rtcp, parse_rtp
from media.softphone import caller_packets
from securepay.calls import Call, CallState, EndReason
from securepay.live import session_group
from securepay.models import AttemptStatus, PaymentAttempt, PaymentSession, Status
from tests.media.signals import assert_no_digit_heard
from tests.media_service.conftest import WorkerProcess, routed_to, start_worker, wait_until
from tests.media_service.test_call_flow import CARD_KEYS, event, link, play, start_call, wait_secure


def card_landed(pages) -> dict:
    state = pages.wait_for(lambda m: m.get("type") == "card.state" and m["ready"], timeout=8)
    assert state["fields"]["pan"]["length"] == 16 and state["brand"] == "visa"
    assert state["fields"]["expiry"]["length"] == 4 and state["fields"]["cvv"]["length"] == 3
    return state


def dropped_counts(worker: WorkerProcess, call_id: str) -> dict[str, int]:
    """The drop counters the worker logs when the call ends."""
    line = worker.wait_for_log(f"call {call_id} ended")
    return ast.literal_eval(line.split("dropped ", 1)[1])


@pytest.mark.slow
def test_malformed_rtp_is_counted_and_dropped_while_the_call_goes_on(media_worker, alpha, session, listen):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    link(alpha, call, session.code)
    wait_secure(pages, "secured")
    garbage = [
        b"\x80\x00\x01",  # short
        b"\x40" + bytes(171),  # RTP version 1
        RtpPacket(13, 1, 160, 7, bytes(160)).build(),  # comfort noise: a payload type this call does not carry
        RtpPacket(0, 2, 320, 7, bytes(800)).build(),  # 100 ms of PCMU in one packet: more than we relay
        bytes([0x80]) + bytes(1999),  # beyond any MTU
    ]
    caller = (call["host"], call["caller_port"])
    extra = [(0.1 + 0.37 * i, "caller", data, caller) for i, data in enumerate(garbage)]
    phones = play(call, extra_schedule=extra)

    card_landed(pages)
    # Nothing of the garbage reached the agent: only our PCMU packets, each the size of the caller's.
    sent = caller_packets(CARD_KEYS)[0]
    relayed = [parse_rtp(data) for _at, data in phones.received["agent"] if not is_rtcp(data)]
    assert len(relayed) >= 0.8 * len(sent)
    assert {(packet.payload_type, len(packet.payload)) for packet in relayed} == {(0, 160)}
    assert link(alpha, call, session.code).status_code == 200  # the API still reaches the call
    assert event(alpha, call, "hangup").status_code == 202
    assert dropped_counts(media_worker, call["id"]) == {"short": 1, "version": 1, "payload_type": 1, "oversized": 2}


@pytest.mark.slow
def test_reordered_and_duplicated_packets_are_tolerated(media_worker, alpha, session, listen):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    link(alpha, call, session.code)
    wait_secure(pages, "secured")
    rng = random.Random(5)

    def jitter(sent: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
        out = list(sent)
        for i in range(0, len(out) - 2, 5):  # every 5th packet overtakes its successor(s) by up to 40 ms
            at, data = out[i]
            out[i] = (at + rng.choice([0.025, 0.045]), data)
        out += [(at + 0.005, data) for at, data in sent[3::11]]  # and some arrive twice
        return out

    phones = play(call, transform_caller=jitter)

    card_landed(pages)
    assert_no_digit_heard(phones.audio("agent"), caller_packets(CARD_KEYS)[1], CARD_KEYS)


def test_a_call_whose_rtp_stops_is_torn_down_and_its_session_unsecured(
    media_worker, vault_key, alpha, session, listen
):
    quick = start_worker(vault_key, rtp_timeout_s=1.0)
    try:
        pages = listen(session_group(session.pk))
        with routed_to(quick):
            call = start_call(alpha, quick)
            link(alpha, call, session.code)
            wait_secure(pages, "secured")
            play(call, "12")  # RTP flows for ~1 s, then stops
            wait_secure(pages, "unsecured", "link_lost")
            assert "ended (rtp_timeout)" in quick.wait_for_log(f"call {call['id']} ended")
            wait_until(lambda: Call.objects.get(pk=call["id"]).state == CallState.ENDED, what="the row ended")
            assert Call.objects.get(pk=call["id"]).end_reason == EndReason.RTP_TIMEOUT
            # Its ports are free again: another call (or anything else) can bind them.
            for port in (call["caller_port"], call["agent_port"]):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind((call["host"], port))
    finally:
        quick.stop()


def test_after_a_worker_crash_open_sessions_are_unsecured_and_payments_untouched(
    media_worker, vault_key, alpha, session, listen
):
    crashing = start_worker(vault_key)
    try:
        open_pages = listen(session_group(session.pk))
        paid = approved_session(alpha)
        with routed_to(crashing):
            open_call = start_call(alpha, crashing)
            link(alpha, open_call, session.code)
            wait_secure(open_pages, "secured")
            paid_call = start_call(alpha, crashing)
            Call.objects.filter(pk=paid_call["id"]).update(session=paid)
            attempt_before = PaymentAttempt.objects.filter(session=paid).values().get()

            crashing.kill()
            assert PaymentSession.objects.get(pk=session.pk).is_secured  # nobody noticed yet
            restarted = WorkerProcess(crashing.worker_id, vault_key)
            restarted.start()
            try:
                wait_secure(open_pages, "unsecured", "link_lost")
                for call in (open_call, paid_call):
                    row = Call.objects.get(pk=call["id"])
                    assert (row.state, row.end_reason) == (CallState.ENDED, EndReason.WORKER_RESTART)
                fresh = PaymentSession.objects.get(pk=paid.pk)
                assert fresh.status == Status.APPROVED and not fresh.is_secured
                assert PaymentAttempt.objects.filter(session=paid).values().get() == attempt_before
            finally:
                restarted.stop()
    finally:
        crashing.kill()


def approved_session(world) -> PaymentSession:
    """A session whose payment went through: status approved, one approved attempt."""
    template = world.tenant.page_templates.get(slug="default")
    paid = PaymentSession.open_for(tenant=world.tenant, template=template, actor="test")
    paid.open_details("test")
    paid.start_card_entry("test", details={"first_name": "Bo"}, amount_minor=990)
    paid.mark_secured("test")
    paid.start_processing("test")
    PaymentAttempt.objects.create(
        session=paid, tenant=world.tenant, number=1, status=AttemptStatus.APPROVED, gateway="sandbox",
        amount_minor=990, currency="GBP", reason_code="approved", gateway_reference="ref-1", brand="visa", last4="4242",
    )  # fmt: skip
    paid.record_result(Status.APPROVED, "gateway-task")
    return paid
