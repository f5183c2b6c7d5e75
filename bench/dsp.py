"""DSP benchmark: this DTMF receiver vs spandsp (ctypes) vs multimon-ng, and masking.

Run: .venv/bin/python bench/dsp.py   (a few minutes on 2 cores; stops by itself)
Writes its section of BENCHMARKS.md between <!-- bench:dsp:start --> and
<!-- bench:dsp:end --> and prints the same table.
"""

from __future__ import annotations

import os

# One core for the speed figures: BLAS must not spread the matmuls over threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import ctypes  # noqa: E402
import ctypes.util  # noqa: E402
import difflib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import machine, write_section  # noqa: E402

from media.codecs import read_wav  # noqa: E402
from media.dtmf import KEYS, BatchDtmfDetector, DtmfDetector, detect  # noqa: E402
from media.masker import BatchStreamingMasker, StreamingMasker  # noqa: E402
from tests.media.signals import (  # noqa: E402
    SPEECH_TEXTS,
    band_noise,
    multimon_digits,
    music,
    sequence,
    to_pcm,
)

FS = 8000
# The masker before the batched core (per-call StreamingMasker at ~190 us/frame),
# loaded from git so that "before" stays measurable on this machine.
BASELINE_REV = "433ad65"


@dataclass
class Item:
    pcm: np.ndarray
    digits: str  # expected ("" for talk-off material)
    intervals: list[tuple[int, int]] = field(default_factory=list)


# -- corpus ----------------------------------------------------------------
def random_digits(rng: np.random.Generator, n: int = 16) -> str:
    return "".join(rng.choice(list(KEYS), size=n))


def speech_corpus(workdir: Path) -> list[np.ndarray]:
    """espeak-ng in 4 languages x 3 speeds x 3 pitches, 8 kHz via sox."""
    out = []
    for lang, text in SPEECH_TEXTS.items():
        for speed in (130, 175, 220):
            for pitch in (25, 50, 80):
                raw, wav = workdir / "raw.wav", workdir / "s.wav"
                subprocess.run(
                    ["espeak-ng", "-v", lang, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text], check=True
                )
                subprocess.run(["sox", "-V1", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(wav)], check=True)
                out.append(read_wav(wav))
    return out


def build_corpus(speech: list[np.ndarray]) -> dict[str, list[Item]]:
    rng = np.random.default_rng(2026)
    voice = np.concatenate(speech).astype(float)
    corpus: dict[str, list[Item]] = {}

    def seqs(n, **kw):
        items = []
        for _ in range(n):
            s = sequence(random_digits(rng), **kw)
            items.append(Item(s.pcm(), s.digits, s.intervals))
        return items

    valid_params = [
        {},
        {"dev": 0.015},
        {"dev": -0.015},
        {"on_ms": 40, "off_ms": 40},
        {"twist_db": 8},
        {"twist_db": -4},
        {"level": -36},
        {"level": 0},
    ]
    corpus["Q.24 valid"] = [it for p in valid_params for it in seqs(4, **p)]
    reject_params = [{"dev": 0.035}, {"dev": -0.035}, {"on_ms": 23}, {"twist_db": 10}, {"twist_db": -6}]
    rejects = [it for p in reject_params for it in seqs(4, **p)]
    for it in rejects:
        it.digits = ""  # nothing may be accepted; intervals kept for the leak check
    corpus["Q.24 must-reject"] = rejects
    for snr in (6, 10, 20):
        items = []
        for _ in range(12):
            level = float(rng.uniform(-30, -5))
            s = sequence(random_digits(rng), level=level)
            x = s.samples + band_noise(s.samples.size, level, snr, rng)
            items.append(Item(to_pcm(x), s.digits, s.intervals))
        corpus[f"noise {snr} dB"] = items
    items = []
    for _ in range(12):
        level = float(rng.uniform(-25, -5))
        s = sequence(random_digits(rng), level=level)
        start = int(rng.integers(0, voice.size - s.samples.size))
        bed = voice[start : start + s.samples.size]
        tone_rms = 22747 * 10 ** (level / 20) / np.sqrt(2)
        items.append(Item(to_pcm(s.samples + bed * (0.316 * tone_rms / np.std(bed))), s.digits, s.intervals))
    corpus["talk-down (speech -10 dB)"] = items
    items = []
    for i in range(12):
        s = sequence(random_digits(rng), on_ms=80, gap_ms=10)
        x = s.samples + (band_noise(s.samples.size, -10, 20, rng) if i % 2 else 0)
        items.append(Item(to_pcm(x), s.digits, s.intervals))
    corpus["10 ms interruptions"] = items
    corpus["speech talk-off (espeak-ng)"] = [Item(x, "") for x in speech]
    corpus["music talk-off"] = [Item(to_pcm(music(60, np.random.default_rng(seed))), "") for seed in range(10)]
    return corpus


# -- receivers ---------------------------------------------------------------
class Spandsp:
    """spandsp's dtmf_rx through ctypes (benchmark only)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("spandsp") or "libspandsp.so.2"
        self.lib = ctypes.CDLL(name)
        self.lib.dtmf_rx_init.restype = ctypes.c_void_p
        self.lib.dtmf_rx_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.dtmf_rx.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int16), ctypes.c_int]
        self.lib.dtmf_rx_get.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        self.lib.dtmf_rx_get.restype = ctypes.c_size_t
        self.lib.dtmf_rx_free.argtypes = [ctypes.c_void_p]

    def detect(self, pcm: np.ndarray, chunk: int = 160) -> str:
        state = self.lib.dtmf_rx_init(None, None, None)
        buf = ctypes.create_string_buffer(256)
        digits = []
        data = np.ascontiguousarray(np.concatenate([pcm, np.zeros(800, np.int16)]))
        for pos in range(0, data.size, chunk):
            part = data[pos : pos + chunk]
            self.lib.dtmf_rx(state, part.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)), part.size)
            got = self.lib.dtmf_rx_get(state, buf, 255)
            digits.append(buf.raw[:got].decode())
        self.lib.dtmf_rx_free(state)
        return "".join(digits)


def ours(pcm: np.ndarray) -> str:
    return "".join(k.digit for k in detect(pcm))


def multimon(pcm: np.ndarray) -> str:
    return multimon_digits(pcm)


# -- scoring -------------------------------------------------------------------
def matched(expected: str, got: str) -> int:
    return sum(b.size for b in difflib.SequenceMatcher(None, expected, got, autojunk=False).get_matching_blocks())


def score(items: list[Item], decode) -> dict[str, float]:
    expected = sum(len(it.digits) for it in items)
    hits = extra = exact = 0
    seconds = sum(it.pcm.size for it in items) / FS
    for it in items:
        got = decode(it.pcm)
        m = matched(it.digits, got)
        hits += m
        extra += len(got) - m
        exact += got == it.digits
    return {
        "digits": 100.0 * hits / expected if expected else float("nan"),
        "exact": 100.0 * exact / len(items),
        "extra": extra,
        "per_hour": extra * 3600.0 / seconds,
        "seconds": seconds,
    }


def mask_item(pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = StreamingMasker()
    outs, flags = [], []
    for pos in range(0, pcm.size, 160):
        outs.append(m.push(pcm[pos : pos + 160]))
        flags.append(m.last_masked)
    outs.append(m.flush())
    flags.append(m.last_masked)
    return np.concatenate(outs), np.concatenate(flags)


# -- speed -------------------------------------------------------------------
def speed_single(pcm: np.ndarray) -> tuple[float, float]:
    det = DtmfDetector()
    t = time.process_time()
    for pos in range(0, pcm.size, 160):
        det.feed(pcm[pos : pos + 160])
    det.flush()
    det_speed = pcm.size / FS / (time.process_time() - t)
    masker = StreamingMasker()
    t = time.process_time()
    for pos in range(0, pcm.size, 160):
        masker.push(pcm[pos : pos + 160])
    masker.flush()
    return det_speed, pcm.size / FS / (time.process_time() - t)


def speed_batch(pool: list[np.ndarray], n: int = 1000, seconds: float = 4.0) -> float:
    rng = np.random.default_rng(1)
    length = int(seconds * FS)
    long = np.concatenate(pool)
    starts = rng.integers(0, long.size - length, size=n)
    block = np.stack([long[s : s + length] for s in starts])
    det = BatchDtmfDetector(n)
    t = time.process_time()
    for pos in range(0, length, 160):  # 20 ms RTP packets
        det.feed(block[:, pos : pos + 160])
    det.flush()
    return n * seconds / (time.process_time() - t)


def baseline_masker() -> type | None:
    """StreamingMasker as of BASELINE_REV (media/dtmf.py + media/masker.py from git)."""
    import importlib.util

    tmp = Path(tempfile.mkdtemp(prefix="dsp-baseline-"))
    try:
        for name in ("dtmf", "masker"):
            src = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{BASELINE_REV}:media/{name}.py"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            (tmp / f"media_baseline_{name}.py").write_text(
                src.replace("from media.dtmf import", "from media_baseline_dtmf import")
            )
    except (OSError, subprocess.CalledProcessError):
        return None
    for name in ("dtmf", "masker"):  # dtmf first: the masker imports it
        spec = importlib.util.spec_from_file_location(f"media_baseline_{name}", tmp / f"media_baseline_{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    shutil.rmtree(tmp, ignore_errors=True)
    return sys.modules["media_baseline_masker"].StreamingMasker


def masker_us_per_frame(cls: type, pcm: np.ndarray) -> float:
    """CPU us per 20 ms frame of one StreamingMasker (best of 3 runs: noise on a shared box)."""
    best = float("inf")
    for _ in range(3):
        masker = cls()
        t = time.process_time()
        for pos in range(0, pcm.size - 159, 160):
            masker.push(pcm[pos : pos + 160])
        best = min(best, (time.process_time() - t) / (pcm.size // 160))
    return best * 1e6


def masker_streams(pool: list[np.ndarray], n: int, seconds: float) -> np.ndarray:
    """n streams of `seconds` each, cut at random places of the corpus (the same for every masker row)."""
    rng = np.random.default_rng(2)
    length = int(seconds * FS)
    long = np.concatenate(pool)
    starts = rng.integers(0, long.size - length, size=n)
    return np.stack([long[s : s + length] for s in starts])


def speed_masker_batch(pool: list[np.ndarray], n: int, seconds: float = 4.0) -> tuple[float, float]:
    """BatchStreamingMasker over n streams: (CPU us per stream per frame, p99 ms per push)."""
    block = masker_streams(pool, n, seconds)
    length = block.shape[1]
    masker = BatchStreamingMasker(n)
    times = []
    for pos in range(0, length, 160):
        t = time.process_time()
        masker.push(block[:, pos : pos + 160])
        times.append(time.process_time() - t)
    frames = len(times)
    return sum(times) / frames / n * 1e6, float(np.percentile(times, 99)) * 1e3


def speed_masker_rows(pool: list[np.ndarray], n: int, parts: int, seconds: float = 4.0) -> tuple[float, float]:
    """BatchStreamingMasker over n streams whose packets arrive at different moments:
    every 20 ms frame is `parts` push_rows calls, each for a disjoint random group
    of n / parts streams.  (CPU us per stream per frame, p99 ms per frame = its pushes)."""
    block = masker_streams(pool, n, seconds)
    rng = np.random.default_rng(3)
    masker = BatchStreamingMasker(n)
    times = []
    for pos in range(0, block.shape[1], 160):
        groups = [(rows, block[rows, pos : pos + 160]) for rows in np.array_split(rng.permutation(n), parts)]
        t = time.process_time()
        for rows, frame in groups:
            masker.push_rows(rows, frame)
        times.append(time.process_time() - t)
    return sum(times) / len(times) / n * 1e6, float(np.percentile(times, 99)) * 1e3


def speed_spandsp(sp: Spandsp, pcm: np.ndarray) -> float:
    t = time.process_time()
    sp.detect(pcm)
    return pcm.size / FS / (time.process_time() - t)


# -- report --------------------------------------------------------------------
def fmt(v: float, digits: int = 1) -> str:
    return "n/a" if v != v else f"{v:.{digits}f}"


def main() -> int:
    began = time.monotonic()
    for tool in ("espeak-ng", "sox", "multimon-ng"):
        if not shutil.which(tool):
            print(f"error: {tool} not installed (apt-get install {tool})", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        speech = speech_corpus(Path(tmp))
    corpus = build_corpus(speech)
    try:
        spandsp: Spandsp | None = Spandsp()
        spandsp_note = "libspandsp (Debian libspandsp-dev) via ctypes, default parameters, 20 ms chunks"
    except OSError as exc:
        spandsp, spandsp_note = None, f"spandsp not available via ctypes: {exc}"

    decoders = {"this": ours, "multimon-ng": multimon}
    if spandsp is not None:
        decoders["spandsp"] = spandsp.detect
    rows = []
    for cat, items in corpus.items():
        res = {name: score(items, dec) for name, dec in decoders.items()}
        rows.append((cat, items, res))
        print(cat, {k: (fmt(v["digits"]), fmt(v["exact"]), v["extra"]) for k, v in res.items()}, flush=True)

    # Masking on every item that holds key tones, plus speech for the alteration figure.
    leak = mm_in = mm_out = 0
    for _cat, items, _ in rows:
        for it in items:
            if not it.intervals:
                continue
            out, flags = mask_item(it.pcm)
            leak += sum(int(np.count_nonzero(~flags[a:b])) for a, b in it.intervals)
            mm_in += len(multimon(it.pcm))
            mm_out += len(multimon(out))
    speech_items = corpus["speech talk-off (espeak-ng)"]
    altered = np.mean([mask_item(it.pcm)[1].mean() for it in speech_items]) * 100
    music_altered = np.mean([mask_item(it.pcm)[1].mean() for it in corpus["music talk-off"]]) * 100

    pool = [it.pcm for items in corpus.values() for it in items]
    mixed = np.concatenate(pool)[: 60 * FS]
    single, masker_speed = speed_single(mixed)
    batched = speed_batch(pool)
    old_masker = baseline_masker()
    mask_before = masker_us_per_frame(old_masker, mixed[: 20 * FS]) if old_masker else float("nan")
    mask_after = masker_us_per_frame(StreamingMasker, mixed[: 20 * FS])
    mask_batch = {n: speed_masker_batch(pool, n) for n in (500, 1000)}
    mask_rows = speed_masker_rows(pool, 500, parts=4)
    sp_speed = speed_spandsp(spandsp, mixed) if spandsp is not None else float("nan")

    names = list(decoders)
    lines = [
        "## DSP: DTMF receiver and masking (`bench/dsp.py`)",
        "",
        f"Machine: {machine()}. Run time {time.monotonic() - began:.0f} s.",
        "",
        "Receivers: **this** = `media.dtmf`; " + spandsp_note + "; multimon-ng 1.2 (`-a DTMF`, input resampled "
        "to 22050 Hz by sox). Levels in dBm0 (0 dBm0 = sine peak 22747); noise SNR = one tone over white noise in "
        "300-3400 Hz; talk-down = speech 10 dB under each tone.",
        "",
        "Per receiver: % of expected digits found / % of sequences exactly right / digits that should not be "
        "there (talk-off per hour for talk-off material).",
        "",
        "| category | items | audio s | " + " | ".join(names) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for cat, items, res in rows:
        cells = []
        for name in names:
            r = res[name]
            if "talk-off" in cat:
                cells.append(f"{r['extra']} digits ({fmt(r['per_hour'])}/h)")
            elif cat == "Q.24 must-reject":
                cells.append(f"{r['extra']} accepted")
            else:
                cells.append(f"{fmt(r['digits'])} % / {fmt(r['exact'])} % / {r['extra']}")
        lines.append(f"| {cat} | {len(items)} | {fmt(res[names[0]]['seconds'], 0)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Speed (seconds of audio per CPU-second, one core, 20 ms frames):",
        "",
        "| what | x real time |",
        "| --- | --- |",
        f"| this receiver, 1 stream | {single:.0f} |",
        f"| this receiver, 1,000 streams batched (`BatchDtmfDetector`) | {batched:.0f} |",
        f"| this masker (receiver + onset detector), 1 stream | {masker_speed:.0f} |",
        f"| spandsp dtmf_rx, 1 stream (C) | {fmt(sp_speed, 0)} |",
        "",
        "Masker cost per call (CPU time per 20 ms frame, one core; frames of the same mixed corpus; the 20 ms "
        "frame is the budget of one core, so calls per core = 20,000 us / (us per stream); \"pushes of 125 rows\": "
        "each frame is 4 `push_rows` calls for disjoint random quarters of the calls, as when packets arrive at "
        "different moments, p99 over a frame's 4 pushes):",
        "",
        "| masker | us per stream per frame | x real time | p99 ms per push (all streams) |",
        "| --- | --- | --- | --- |",
        f"| `StreamingMasker`, 1 stream, before (git {BASELINE_REV}) | {fmt(mask_before)} "
        f"| {fmt(20000 / mask_before, 0)} | |",
        f"| `StreamingMasker`, 1 stream, after | {fmt(mask_after)} | {fmt(20000 / mask_after, 0)} | |",
    ]
    for n, (us, p99) in mask_batch.items():
        lines.append(f"| `BatchStreamingMasker`, {n:,} streams | {fmt(us)} | {fmt(20000 / us, 0)} | {fmt(p99, 2)} |")
    us, p99 = mask_rows
    label = "`BatchStreamingMasker`, 500 streams, pushes of 125 rows"
    lines.append(f"| {label} | {fmt(us)} | {fmt(20000 / us, 0)} | {fmt(p99, 2)} |")
    lines += [
        "",
        "Masking (`StreamingMasker`, hold-back 30 ms, 20 ms frames) over every item with key tones "
        "(must-reject tones included: fail closed):",
        "",
        "| measure | value | target |",
        "| --- | --- | --- |",
        f"| tone samples leaked before masking | {leak} samples = {leak / 8:.1f} ms | 0 ms |",
        f"| digits multimon-ng decodes from the input | {mm_in} | (proves the check can fail) |",
        f"| digits multimon-ng decodes from the masked output | {mm_out} | 0 |",
        f"| espeak-ng speech samples altered | {altered:.2f} % | small |",
        f"| synthetic music samples altered | {music_altered:.2f} % | (chords and glides hit the onset detector) |",
    ]
    print(write_section("dsp", "\n".join(lines)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
