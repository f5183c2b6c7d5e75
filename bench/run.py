"""`make bench`: run every benchmark; each writes its own section of BENCHMARKS.md.

A benchmark that needs a service which is not running reports that in its
section instead of failing the others.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
BENCHMARKS = ["dsp.py", "ws_latency.py", "link_latency.py", "media_worker.py"]


def main() -> int:
    failures = []
    for name in BENCHMARKS:
        script = BENCH_DIR / name
        if not script.exists():
            print(f"-- {name}: not present, skipped")
            continue
        print(f"-- {name}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=BENCH_DIR.parent).returncode != 0:
            failures.append(name)
    if failures:
        print(f"benchmarks failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("results written to BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
