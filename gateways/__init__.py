"""Gateway adapters: one interface (`gateways.base`), one folder per gateway.

The built-in sandbox is the demo default; Stripe and a generic signed-JSON HTTP
connector take real payments. Adapters are plain Python: Django models, settings
and Celery wiring live elsewhere and call these through `get_adapter`.
"""
