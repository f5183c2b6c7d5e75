"""Skipping rules for tests that need a real outside part (a server, a binary).

Outside CI a missing part skips the test with a loud reason; under CI=true
the same absence fails the test, so CI can never go green by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(reason: str) -> None:
    """Skip (developer machine) or fail (CI) because a real part is missing."""
    message = f"REAL PART MISSING: {reason}"
    if IN_CI:
        pytest.fail(message + " (CI=true: skipping is not allowed)", pytrace=False)
    pytest.skip(message)


def require_binary(name: str) -> str:
    """Return the path of an executable, or skip/fail loudly when it is absent."""
    path = shutil.which(name) or (name if os.path.isfile(name) and os.access(name, os.X_OK) else None)
    if not path:
        missing(f"executable {name!r} not found (apt-get install it; .ci/run does)")
    return path


def require_tcp(host: str, port: int, what: str) -> None:
    """Skip/fail loudly when nothing listens on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as exc:
        missing(f"{what} not reachable at {host}:{port} ({exc})")


def udp_port_bound(port: int) -> bool:
    """Whether some socket on this host has bound the UDP port (read from /proc,
    so the check itself never takes the port)."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as lines:
            next(lines)
            if any(line.split()[1].endswith(wanted) for line in lines):
                return True
    return False
