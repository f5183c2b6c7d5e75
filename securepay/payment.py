"""Process payment: one attempt per press, charged by a gateway task.

The web tier never reads the card: it checks that the media worker put one in
the vault, records the attempt and hands its id (never card data) to Celery.
Pages hear of "processing" and of the result through the session_transitioned
receiver in securepay.live.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Max
from django.utils.translation import gettext_lazy as _

from gateways.models import DEFAULT_ADAPTER
from gateways.tasks import charge_attempt
from securepay.calls import live_call_id
from securepay.models import PaymentAttempt, PaymentSession
from securepay.vault import get_vault


class PaymentNotReady(Exception):
    """Process payment cannot start; `code` for machines, `message` for the agent."""

    def __init__(self, code: str, message: str):
        self.code, self.message = code, message
        super().__init__(code)


def request_payment(session: PaymentSession, actor: str) -> PaymentAttempt:
    """Start charging the keyed card. Raises PaymentNotReady or IllegalTransition."""
    session.refresh_from_db()
    if not session.is_secured:
        raise PaymentNotReady("not_secured", _("The call is not secured: the card cannot be charged now."))
    if session.amount_minor is None:
        raise PaymentNotReady("no_amount", _("The payment has no amount yet."))
    keyed_on = get_vault().keyed_on(session.pk)
    if keyed_on is None:
        raise PaymentNotReady("no_card", _("No complete card has been keyed yet."))
    if keyed_on != live_call_id(session.pk):
        # Keyed on a call that lost the session (its last key raced a claim): not this call's card.
        raise PaymentNotReady("no_card", _("The card was keyed on another call: ask the caller to key it again."))
    with transaction.atomic():
        # The transition locks the session row first, so two presses cannot
        # both create an attempt: the second one fails here with IllegalTransition.
        session.start_processing(actor)
        number = (session.attempts.aggregate(Max("number"))["number__max"] or 0) + 1
        attempt = PaymentAttempt.objects.create(
            session=session,
            tenant=session.tenant,
            number=number,
            # gateways.processing records the tenant's active gateway when it sends.
            gateway=DEFAULT_ADAPTER,
            amount_minor=session.amount_minor,
            currency=session.currency,
            card_keyed_on=keyed_on,
        )
        transaction.on_commit(lambda: charge_attempt.delay(str(attempt.id)))
    return attempt

