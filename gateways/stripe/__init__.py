"""The Stripe gateway (PaymentIntents, MOTO-flagged)."""
