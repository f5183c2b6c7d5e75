"""The sentences an agent reads aloud after a payment, in the agent's language.

The English originals stay in one place, `gateways.base.AGENT_MESSAGES` (keyed
by our stable reason codes, marked with gettext_noop so makemessages extracts
them); they are translated here at render time, in the agent's language.
"""

from __future__ import annotations

from django.utils.translation import gettext

from gateways.base import AGENT_MESSAGES


def agent_message_labels() -> dict[str, dict[str, str]]:
    """For the agent page: reason code -> the stock English sentence and its translation.

    The page shows the translation only when a result carries the stock sentence
    for its reason code; a gateway's own wording is shown as sent.
    """
    return {code: {"en": english, "text": gettext(english)} for code, english in AGENT_MESSAGES.items()}

