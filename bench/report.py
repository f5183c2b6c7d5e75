"""What every benchmark shares: the machine line and its own section of BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def machine() -> str:
    """CPU model, cores, Python (and numpy when loaded), and the date: results mean nothing without them."""
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1).strip()
    except (OSError, AttributeError):
        cpu = platform.processor() or "unknown CPU"
    numpy = ""
    if "numpy" in __import__("sys").modules:
        numpy = f", numpy {__import__('numpy').__version__}"
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}{numpy}; {when}"


def write_section(name: str, body: str) -> str:
    """Replace (or append) this benchmark's section, leaving the others as they are."""
    start, end = markers(name)
    section = f"{start}\n{body.strip()}\n{end}"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)
    return section
