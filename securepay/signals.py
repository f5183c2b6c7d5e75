"""Signals other apps listen to, so the session model needs to know none of them."""

from django.dispatch import Signal

# Sent after a PaymentSession's status change is committed.
# kwargs: session (fresh instance), from_state, to_state, actor.
session_transitioned = Signal()
