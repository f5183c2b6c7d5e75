"""Media worker: codecs, DTMF detection, RFC 4733 events and key-tone masking.

The DSP modules here are pure (numpy only, no I/O, no Django) so that the worker,
the CLI (``python -m media``) and the benchmarks share exactly the same code.
"""
