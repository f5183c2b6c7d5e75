"""Settings of the gateways app, and the cipher that keeps gateway credentials at rest.

Credentials (API keys, signing secrets) are stored only as Fernet tokens keyed by
GATEWAY_CREDENTIALS_KEY, a key of their own: a database dump, or a leaked
SECRET_KEY alone, does not reveal them. Like VAULT_KEY, a derived key is
accepted only in DEBUG (demo and development).
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def gateway_retry_delays() -> tuple[float, ...]:
    """Pauses between in-process retries of one gateway call (transport errors, reconcile)."""
    return tuple(float(value) for value in settings.GATEWAY_RETRY_DELAYS)


def reconcile_task_retry_seconds() -> float:
    """Celery countdown before the charge task asks the gateway again about an unknown outcome."""
    return float(settings.GATEWAY_RECONCILE_RETRY_SECONDS)


def webhook_retry_base_seconds() -> float:
    """First webhook retry delay; each further retry doubles it."""
    return float(settings.WEBHOOK_RETRY_BASE_SECONDS)


WEBHOOK_MAX_TRIES = 8
WEBHOOK_TIMEOUT_SECONDS = 10


class CredentialsKeyMissing(ImproperlyConfigured):
    pass


@lru_cache(maxsize=1)
def _cipher() -> Fernet:
    key = settings.GATEWAY_CREDENTIALS_KEY
    if key:
        try:
            return Fernet(key)
        except ValueError as exc:
            raise CredentialsKeyMissing(
                "GATEWAY_CREDENTIALS_KEY must be a Fernet key (32 url-safe base64 bytes)") from exc
    if settings.DEBUG:
        # Demo and development only: derived so every demo process agrees.
        derived = hashlib.sha256(("gateway-credentials:" + settings.SECRET_KEY).encode()).digest()
        return Fernet(base64.urlsafe_b64encode(derived))
    raise CredentialsKeyMissing("GATEWAY_CREDENTIALS_KEY is not set")


def generate_credentials_key() -> str:
    """A fresh GATEWAY_CREDENTIALS_KEY value for operators."""
    return Fernet.generate_key().decode()


def encrypt_credentials(credentials: dict[str, Any]) -> str:
    return _cipher().encrypt(json.dumps(credentials, sort_keys=True).encode()).decode()


def decrypt_credentials(token: str) -> dict[str, Any]:
    if not token:
        return {}
    try:
        return json.loads(_cipher().decrypt(token.encode()))
    except InvalidToken as exc:
        raise CredentialsKeyMissing(
            "gateway credentials cannot be decrypted with this GATEWAY_CREDENTIALS_KEY") from exc
