"""Media CLI: ``python -m media detect IN.wav`` / ``python -m media mask IN.wav OUT.wav``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from media.codecs import WavError, read_wav, write_wav
from media.dtmf import detect
from media.masker import mask_pcm


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m media", description="DTMF detection and masking (8 kHz mono 16-bit WAV)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_detect = sub.add_parser("detect", help="print one JSON line per key press")
    p_detect.add_argument("input")
    p_mask = sub.add_parser("mask", help="write what an agent hears in secure mode")
    p_mask.add_argument("input")
    p_mask.add_argument("output")
    p_mask.add_argument("--mode", choices=("tone", "silence"), default="tone")
    return parser


def _write_atomic(path: Path, samples) -> None:
    # Temp file in the target folder + rename: OUT.wav is complete or absent.
    fd, tmp = tempfile.mkstemp(prefix=".mask-", suffix=".wav", dir=path.parent)
    os.close(fd)
    try:
        write_wav(tmp, samples)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        samples = read_wav(args.input)
        if args.command == "detect":
            for kp in detect(samples):
                print(json.dumps({"digit": kp.digit, "start_ms": kp.start_ms, "end_ms": kp.end_ms}))
        else:
            _write_atomic(Path(args.output), mask_pcm(samples, mode=args.mode))
    except (WavError, OSError) as exc:
        message = str(exc) if isinstance(exc, WavError) else f"{args.output}: {exc.strerror or exc}"
        print(f"error: {message}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
