"""The built-in sandbox gateway: deterministic, in memory, the demo default."""
