"""The short-lived card vault: the only place a card rests between the media
worker (which captured it) and the gateway task (which charges it).

AES-256-GCM with VAULT_KEY; the session id is authenticated data, so a
ciphertext cannot be replayed into another session. Each copy also names the
call it was keyed on (readable without the key, authenticated with it): a card
keyed on a call that has lost the session is not charged for it. Redis with a TTL of at
most 15 minutes in production (shared by media and Celery workers); an
in-process store in the demo. `take` reads and deletes in one step: a card is
charged from the vault at most once. The web tier runs without VAULT_KEY and so
cannot read it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from functools import lru_cache

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

from securepay.card import Card

KEY_PREFIX = "securepay:vault:card2:"  # 2: the copy names its call (a copy of the old format is not read ...
LEGACY_KEY_PREFIX = "securepay:vault:card:"  # ... but discarded with the new one until its TTL has run out)
NONCE_BYTES = 12


class VaultUnavailable(RuntimeError):
    """No key or no store: the card cannot be kept, so nothing is accepted (fail closed)."""


def _load_key() -> bytes | None:
    """The AES key, or None in a process that must not read the vault (the web tier)."""
    if settings.VAULT_KEY:
        try:
            key = base64.urlsafe_b64decode(settings.VAULT_KEY + "=" * (-len(settings.VAULT_KEY) % 4))
        except ValueError as exc:
            raise VaultUnavailable("VAULT_KEY is not valid base64") from exc
        if len(key) != 32:
            raise VaultUnavailable("VAULT_KEY must decode to 32 bytes (AES-256)")
        return key
    if settings.DEBUG:
        # Demo and development only: derived so the demo's processes agree.
        return hashlib.sha256(("vault:" + settings.SECRET_KEY).encode()).digest()
    return None


def generate_key() -> str:
    """A fresh VAULT_KEY value for operators."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


class Vault:
    """Encrypts/decrypts; subclasses only move opaque bytes.

    Without a key (the web tier) the vault can still tell whether a card is
    waiting and discard it, but never store or read one.
    """

    def __init__(self, key: bytes | None, ttl_seconds: int):
        self._key = key
        self.ttl_seconds = min(ttl_seconds, 900)

    @property
    def _aead(self) -> AESGCM:
        if self._key is None:
            raise VaultUnavailable("VAULT_KEY is not set in this process: it cannot store or read cards")
        return AESGCM(self._key)

    def put(self, session_id: str, card: Card, keyed_on: str = "") -> None:
        """Store the session's card; `keyed_on`: the call it was keyed on ("" for none: the keypad simulator)."""
        call = keyed_on.encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, card.to_vault_bytes(), self._associated(session_id, call))
        self._store(KEY_PREFIX + str(session_id), bytes([len(call)]) + call + nonce + sealed)

    def take(self, session_id: str) -> Card | None:
        """The card for this session, removed from the vault; None when absent or expired."""
        taken = self.take_keyed(session_id)
        return None if taken is None else taken[0]

    def take_keyed(self, session_id: str) -> tuple[Card, str] | None:
        """As `take`, with the call the card was keyed on."""
        aead = self._aead  # a process without the key must not even consume the card
        blob = self._pop(KEY_PREFIX + str(session_id))
        if blob is None:
            return None
        call, body = self._split(blob)
        card = Card.from_vault_bytes(
            aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], self._associated(session_id, call))
        )
        return card, call.decode()

    def keyed_on(self, session_id: str) -> str | None:
        """The call the session's card was keyed on ("": none); None when there is no card."""
        blob = self._get(KEY_PREFIX + str(session_id))
        return None if blob is None else self._split(blob)[0].decode()

    def has_card(self, session_id: str) -> bool:
        return self._exists(KEY_PREFIX + str(session_id))

    @staticmethod
    def _associated(session_id: str, call: bytes) -> bytes:
        return str(session_id).encode() + b"|" + call

    @staticmethod
    def _split(blob: bytes) -> tuple[bytes, bytes]:
        size = blob[0]
        return blob[1 : 1 + size], blob[1 + size :]

    def discard(self, session_id: str) -> None:
        self._pop(KEY_PREFIX + str(session_id))
        self._pop(LEGACY_KEY_PREFIX + str(session_id))

    # storage primitives
    def _store(self, key: str, blob: bytes) -> None:
        raise NotImplementedError

    def _pop(self, key: str) -> bytes | None:
        raise NotImplementedError

    def _exists(self, key: str) -> bool:
        raise NotImplementedError

    def _get(self, key: str) -> bytes | None:
        raise NotImplementedError


class MemoryVault(Vault):
    """Demo: the media worker and eager Celery run in the same process."""

    def __init__(self, key: bytes | None, ttl_seconds: int):
        super().__init__(key, ttl_seconds)
        self._items: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()

    def _store(self, key: str, blob: bytes) -> None:
        with self._lock:
            self._items[key] = (time.monotonic() + self.ttl_seconds, blob)

    def _pop(self, key: str) -> bytes | None:
        with self._lock:
            expires, blob = self._items.pop(key, (0.0, None))
        return blob if blob is not None and expires > time.monotonic() else None

    def _exists(self, key: str) -> bool:
        return self._get(key) is not None

    def _get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
        return item[1] if item is not None and item[0] > time.monotonic() else None


class RedisVault(Vault):
    def __init__(self, key: bytes | None, ttl_seconds: int, redis_url: str):
        super().__init__(key, ttl_seconds)
        import redis

        self._redis = redis.Redis.from_url(redis_url)

    def _store(self, key: str, blob: bytes) -> None:
        self._redis.set(key, blob, ex=self.ttl_seconds)

    def _pop(self, key: str) -> bytes | None:
        return self._redis.getdel(key)

    def _exists(self, key: str) -> bool:
        return bool(self._redis.exists(key))

    def _get(self, key: str) -> bytes | None:
        return self._redis.get(key)


@lru_cache(maxsize=1)
def get_vault() -> Vault:
    key = _load_key()
    if settings.REDIS_URL:
        return RedisVault(key, settings.VAULT_TTL_SECONDS, settings.REDIS_URL)
    return MemoryVault(key, settings.VAULT_TTL_SECONDS)
