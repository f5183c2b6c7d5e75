"""The Card type cannot leak, the vault encrypts and forgets, the log filter redacts."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import pickle

import pytest

from securepay.card import Card, CardDataError, cvv_length, detect_brand, expiry_ok, luhn_ok, pan_ok
from securepay.log_filters import CardDataFilter, redact_card_numbers
from securepay.vault import KEY_PREFIX, LEGACY_KEY_PREFIX, MemoryVault, RedisVault
from tests.support import require_tcp

PAN = "4242424242424242"


def test_card_never_shows_its_digits():
    card = Card(PAN, "1230", "123")
    for text in (repr(card), str(card), f"{card}", "{}".format(card)):  # noqa: UP032
        assert PAN not in text and "123" not in text.replace("****", "")
        assert "4242" in text  # last four only
    with pytest.raises(TypeError):
        pickle.dumps(card)
    with pytest.raises(TypeError):
        copy.deepcopy(card)
    with pytest.raises(TypeError):
        json.dumps(card)
    assert not hasattr(card, "__dict__")


def test_card_validation_messages_contain_no_digits():
    with pytest.raises(CardDataError) as exc:
        Card("42424242", "1230")
    assert "4242" not in str(exc.value)


def test_without_cvv_drops_the_cvv():
    assert Card(PAN, "1230", "123").without_cvv().cvv == ""


@pytest.mark.parametrize(
    "pan, brand, ok",
    [
        ("4242424242424242", "visa", True),
        ("4242424242424241", "visa", False),  # Luhn
        ("5555555555554444", "mastercard", True),
        ("2223003122003222", "mastercard", True),
        ("378282246310005", "amex", True),
        ("6011111111111117", "discover", True),
        ("424242424242424", "visa", False),  # length
    ],
)
def test_brand_and_luhn(pan, brand, ok):
    assert detect_brand(pan) == brand
    assert pan_ok(pan) is ok


def test_accepted_brands_and_cvv_length():
    assert not pan_ok("378282246310005", frozenset({"visa"}))
    assert cvv_length("amex") == 4 and cvv_length("visa") == 3
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")


def test_expiry_is_this_month_or_later():
    today = dt.date(2026, 11, 26)
    assert expiry_ok("1126", today) and expiry_ok("0127", today)
    assert not expiry_ok("1026", today) and not expiry_ok("1326", today) and not expiry_ok("12a6", today)


def test_log_filter_redacts_luhn_valid_numbers_only():
    assert PAN not in redact_card_numbers(f"body card={PAN}&x=1")
    assert "4242 4242 4242 4242" not in redact_card_numbers("card 4242 4242 4242 4242")
    assert redact_card_numbers("order 1234567890123") == "order 1234567890123"  # not Luhn-valid


def test_log_filter_scrubs_messages_and_tracebacks(caplog):
    logger = logging.getLogger("securepay.test")
    handler_filter = CardDataFilter()
    try:
        raise ValueError(f"gateway said {PAN}")
    except ValueError:
        record = logger.makeRecord(
            "t", logging.ERROR, __file__, 1, "failed for %s", (PAN,), exc_info=__import__("sys").exc_info()
        )
    handler_filter.filter(record)
    assert PAN not in record.getMessage() and PAN not in record.exc_text


def _vault_roundtrip(vault):
    vault.put("s-1", Card(PAN, "1230", "123"))
    assert vault.has_card("s-1")
    card = vault.take("s-1")
    assert card.pan == PAN and card.cvv == "123"
    assert vault.take("s-1") is None  # read-and-delete: charged at most once
    vault.put("s-2", Card(PAN, "1230", "123"))
    vault.discard("s-2")
    assert not vault.has_card("s-2")


def test_memory_vault():
    _vault_roundtrip(MemoryVault(b"k" * 32, 60))


def test_memory_vault_expires():
    vault = MemoryVault(b"k" * 32, 0)
    vault.put("s", Card(PAN, "1230", "123"))
    assert vault.take("s") is None


@pytest.mark.redis
def test_redis_vault_encrypts_with_ttl_and_session_binding():
    require_tcp("127.0.0.1", 6379, "Redis")
    import redis

    url = "redis://127.0.0.1:6379/14"
    vault = RedisVault(b"k" * 32, 600, url)
    _vault_roundtrip(vault)
    vault.put("s-3", Card(PAN, "1230", "123"))
    raw = redis.Redis.from_url(url)
    blob = raw.get(KEY_PREFIX + "s-3")
    assert PAN.encode() not in blob and b"1230" not in blob
    assert 0 < raw.ttl(KEY_PREFIX + "s-3") <= 600
    # A ciphertext moved to another session's key does not decrypt.
    raw.set(KEY_PREFIX + "s-4", blob)
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        vault.take("s-4")
    vault.discard("s-3")


def test_keyless_vault_sees_and_discards_but_cannot_read_or_store():
    from securepay.vault import VaultUnavailable

    keyed, keyless = MemoryVault(b"k" * 32, 60), MemoryVault(None, 60)
    keyed.put("s", Card(PAN, "1230", "123"))
    keyless._items = keyed._items  # the same store, as Redis is for every process
    assert keyless.has_card("s")
    with pytest.raises(VaultUnavailable):
        keyless.take("s")
    assert keyed.has_card("s")  # the failed read did not consume the card
    with pytest.raises(VaultUnavailable):
        keyless.put("t", Card(PAN, "1230", "123"))
    keyless.discard("s")
    assert not keyed.has_card("s")


def test_the_vault_copy_names_the_call_it_was_keyed_on_readable_without_the_key():
    keyed, keyless = MemoryVault(b"k" * 32, 60), MemoryVault(None, 60)
    keyless._items = keyed._items  # the same store, as Redis is for every process
    assert keyless.keyed_on("s") is None
    keyed.put("s", Card(PAN, "1230", "123"), keyed_on="call-1")
    keyed.put("t", Card(PAN, "1230", "123"))  # the keypad simulator: no call
    assert (keyless.keyed_on("s"), keyless.keyed_on("t")) == ("call-1", "")
    assert keyed.has_card("s")  # reading the call does not consume the card
    card, call = keyed.take_keyed("s")
    assert (card.pan, call) == (PAN, "call-1")
    # The call is authenticated: a copy relabelled for another call does not decrypt.
    keyed.put("s", Card(PAN, "1230", "123"), keyed_on="call-1")
    expires, blob = keyed._items[KEY_PREFIX + "s"]
    keyed._items[KEY_PREFIX + "s"] = (expires, blob.replace(b"call-1", b"call-2", 1))
    assert keyless.keyed_on("s") == "call-2"
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        keyed.take("s")


def test_a_copy_in_the_old_format_is_not_read_but_is_discarded():
    vault = MemoryVault(b"k" * 32, 60)
    vault._store(LEGACY_KEY_PREFIX + "s", b"an old copy, written before the upgrade")
    assert not vault.has_card("s") and vault.keyed_on("s") is None and vault.take("s") is None
    vault.discard("s")  # Back, end, a lost link: no card outlives its card entry
    assert vault._get(LEGACY_KEY_PREFIX + "s") is None


def test_log_filter_redacts_named_card_fields_in_request_bodies():
    body = "card[number]=4242424242424242&card[exp_month]=12&card[exp_year]=2030&card[cvc]=123&amount=1250"
    redacted = redact_card_numbers(body)
    assert PAN not in redacted and "cvc]=123" not in redacted and "exp_year]=2030" not in redacted
    assert "amount=1250" in redacted
    assert "123" not in redact_card_numbers('{"cvv": "123", "amount": 1}').replace('"amount": 1', "")


def test_gateway_sdk_debug_logging_and_celery_workers_keep_the_card_filter():
    from securepay.celery import app

    # stripe-python logs request bodies at DEBUG; whatever LOG_LEVEL says, it stays at WARNING.
    assert logging.getLogger("stripe").level == logging.WARNING
    # Celery must not replace the root handlers (and with them the card-data filter).
    assert app.conf.worker_hijack_root_logger is False
    root_filters = [f for h in logging.getLogger().handlers for f in h.filters]
    assert any(isinstance(f, CardDataFilter) for f in root_filters)
