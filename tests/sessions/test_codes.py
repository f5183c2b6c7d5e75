"""Link codes: 4 digits, unique among a tenant's open sessions, cooled after end, per tenant."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

from django.utils import timezone

from securepay.models import CODE_COOLING_PERIOD, PaymentSession
from tests.live.conftest import open_session


def drawing(*numbers: int):
    """Make the code generator draw these numbers, in order."""
    return mock.patch("securepay.models.secrets.randbelow", side_effect=list(numbers))


def test_many_open_sessions_get_distinct_four_digit_codes(alpha):
    codes = [open_session(alpha).code for _ in range(300)]
    assert all(len(code) == 4 and code.isdigit() for code in codes)
    assert len(set(codes)) == len(codes)


def test_a_code_in_use_is_drawn_again(alpha):
    with drawing(7, 7, 8):
        first, second = open_session(alpha), open_session(alpha)
    assert (first.code, second.code) == ("0007", "0008")


def test_an_ended_sessions_code_cools_before_reuse(alpha):
    with drawing(42):
        ended = open_session(alpha)
    ended.end("user:alpha-agent")
    with drawing(42, 43):
        assert open_session(alpha).code == "0043"
    cooled = timezone.now() - CODE_COOLING_PERIOD - timedelta(minutes=1)
    PaymentSession.objects.filter(pk=ended.pk).update(ended_at=cooled)
    with drawing(42):
        assert open_session(alpha).code == "0042"


def test_tenants_draw_codes_independently(alpha, beta):
    with drawing(1234, 1234):
        assert open_session(alpha).code == open_session(beta).code == "1234"
