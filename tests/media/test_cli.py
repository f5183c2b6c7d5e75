"""`python -m media detect|mask` as a user runs it (subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from media.codecs import read_wav, write_wav
from media.masker import GUARD
from tests.media.signals import sequence

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "media", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def card_wav(tmp_path) -> tuple[Path, object]:
    seq = sequence("4929123", on_ms=60, off_ms=60)
    path = tmp_path / "in.wav"
    write_wav(path, seq.pcm())
    return path, seq


def test_detect_prints_one_json_object_per_press(card_wav):
    path, seq = card_wav
    res = cli("detect", str(path))
    assert res.returncode == 0 and res.stderr == ""
    lines = res.stdout.splitlines()
    assert len(lines) == 7
    for line, digit, (a, b) in zip(lines, "4929123", seq.intervals, strict=True):
        obj = json.loads(line)
        assert list(obj) == ["digit", "start_ms", "end_ms"]
        assert line == json.dumps(obj)
        assert obj["digit"] == digit
        assert isinstance(obj["start_ms"], float) and isinstance(obj["end_ms"], float)
        assert abs(obj["start_ms"] - a / 8) <= 2 and abs(obj["end_ms"] - b / 8) <= 2


@pytest.mark.parametrize("mode", [None, "tone", "silence"])
def test_mask_writes_time_aligned_wav(card_wav, tmp_path, mode):
    path, seq = card_wav
    out = tmp_path / "out.wav"
    res = cli("mask", str(path), str(out), *(["--mode", mode] if mode else []))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
    x, y = read_wav(path), read_wav(out)
    assert y.size == x.size
    keep = np.ones(x.size, dtype=bool)
    for a, b in seq.intervals:
        keep[a - 2 * GUARD : b + 2 * GUARD] = False
        assert not np.array_equal(y[a:b], x[a:b])
        if mode == "silence":
            assert not np.any(y[a:b])
    assert np.array_equal(y[keep], x[keep])  # time-aligned, bit-exact elsewhere
    assert cli("detect", str(out)).stdout == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mask-")] == []


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    def wav(name, rate=8000, channels=1, width=2, n=800):
        p = tmp_path / name
        with wave.open(str(p), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(width)
            w.setframerate(rate)
            w.writeframes(b"\x00" * width * channels * n)
        return p

    text = tmp_path / "text.wav"
    text.write_text("this is not audio\n")
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(wav("full.wav").read_bytes()[:-100])
    return {
        "missing": tmp_path / "missing.wav",
        "not_wav": text,
        "rate": wav("rate.wav", rate=44100),
        "stereo": wav("stereo.wav", channels=2),
        "8bit": wav("8bit.wav", width=1),
        "truncated": truncated,
    }


@pytest.mark.parametrize("kind", ["missing", "not_wav", "rate", "stereo", "8bit", "truncated"])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, kind):
    bad = _bad_files(tmp_path)[kind]
    out = tmp_path / "out.wav"
    for args in (("detect", str(bad)), ("mask", str(bad), str(out)), ("mask", str(bad), str(out), "--mode", "silence")):
        res = cli(*args)
        assert res.returncode == 2
        assert res.stdout == ""
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert not out.exists()


def test_unwritable_output_is_an_error(card_wav, tmp_path):
    path, _ = card_wav
    res = cli("mask", str(path), str(tmp_path / "no" / "such" / "dir" / "out.wav"))
    assert res.returncode == 2 and res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1


def test_usage_errors_exit_2():
    assert cli().returncode == 2
    assert cli("mask", "only-one-arg.wav").returncode == 2


def test_dsp_modules_import_no_django():
    code = (
        "import sys, media.codecs, media.dtmf, media.rfc4733, media.masker, media.__main__\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'securepay', 'tenants', 'gateways')]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
