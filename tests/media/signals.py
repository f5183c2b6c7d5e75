"""Test-signal generators shared by the media tests and bench/dsp.py.

Levels in dBm0 follow media.dtmf (0 dBm0 = sine peak DBM0_PEAK).  SNR is the
power of ONE tone of the pair over the power of white noise in 300-3400 Hz.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from media.codecs import read_wav, write_wav
from media.dtmf import DBM0_PEAK, HIGH_FREQS, KEYS, LOW_FREQS, SAMPLE_RATE
from media.masker import DEFAULT_TONE_HZ
from tests.support import require_binary

FS = SAMPLE_RATE
FLAT_TONE_HZ = DEFAULT_TONE_HZ  # what the masker puts in place of a key tone
SPEECH_TEXTS = {
    "en": "Thank you for calling. Please confirm your account number and the amount of twelve pounds fifty. "
    "The quick brown fox jumps over the lazy dog, one two three four five six seven eight nine zero.",
    "fr": "Merci de votre appel. Veuillez confirmer votre numéro de compte et le montant de douze euros cinquante. "
    "Un deux trois quatre cinq six sept huit neuf zéro, le vif renard brun saute par-dessus le chien paresseux.",
    "de": "Vielen Dank für Ihren Anruf. Bitte bestätigen Sie Ihre Kontonummer und den Betrag von zwölf Euro. "
    "Eins zwei drei vier fünf sechs sieben acht neun null, der schnelle braune Fuchs springt über den Hund.",
    "es": "Gracias por su llamada. Por favor confirme su número de cuenta y el importe de doce euros con cincuenta. "
    "Uno dos tres cuatro cinco seis siete ocho nueve cero, el veloz zorro marrón salta sobre el perro perezoso.",
}


def amplitude(level_dbm0: float) -> float:
    return DBM0_PEAK * 10 ** (level_dbm0 / 20)


def tone_pair(
    digit: str,
    ms: float,
    level: float = -10.0,
    twist_db: float = 0.0,
    dev: float = 0.0,
    phase: float = 0.0,
) -> np.ndarray:
    """One DTMF tone; twist_db > 0 = low tone stronger (normal), < 0 reverse;
    level is the mean of the two tone levels in dBm0; dev the relative frequency offset."""
    row, col = divmod(KEYS.index(digit), 4)
    n = np.arange(int(round(ms * FS / 1000)))
    a = amplitude(level)
    lo = a * 10 ** (twist_db / 40) * np.sin(2 * np.pi * LOW_FREQS[row] * (1 + dev) * n / FS + phase)
    hi = a * 10 ** (-twist_db / 40) * np.sin(2 * np.pi * HIGH_FREQS[col] * (1 + dev) * n / FS + phase)
    return lo + hi


@dataclass
class Sequence:
    """A generated signal (float) with the true tone intervals in samples."""

    samples: np.ndarray
    digits: str
    intervals: list[tuple[int, int]] = field(default_factory=list)

    def pcm(self) -> np.ndarray:
        return to_pcm(self.samples)


def to_pcm(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def sequence(
    digits: str,
    on_ms: float = 60.0,
    off_ms: float = 60.0,
    lead_ms: float = 100.0,
    gap_ms: float = 0.0,
    **tone_kw,
) -> Sequence:
    """Digits separated by pauses; gap_ms > 0 puts a drop-out of that length in
    the middle of every tone (the tone resumes with its phase continued)."""
    parts = [np.zeros(int(lead_ms * FS / 1000))]
    pos = parts[0].size
    intervals = []
    for d in digits:
        t = tone_pair(d, on_ms, **tone_kw)
        if gap_ms:
            mid, g = t.size // 2, int(gap_ms * FS / 1000)
            t[mid : mid + g] = 0.0
        parts += [t, np.zeros(int(off_ms * FS / 1000))]
        intervals.append((pos, pos + t.size))
        pos += t.size + parts[-1].size
    parts.append(np.zeros(int(lead_ms * FS / 1000)))
    return Sequence(np.concatenate(parts), digits, intervals)


def band_noise(n: int, tone_level: float, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise whose 300-3400 Hz part is snr_db below one tone at tone_level dBm0."""
    tone_power = amplitude(tone_level) ** 2 / 2
    sigma2 = tone_power / 10 ** (snr_db / 10) / ((3400 - 300) / (FS / 2))
    return rng.normal(0.0, np.sqrt(sigma2), n)


def music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Synthetic music: harmonic chords (equal temperament) and glissandi."""
    n_total = int(seconds * FS)
    out = np.zeros(n_total)
    t = np.arange(n_total) / FS
    pos = 0
    while pos < n_total:
        length = int(rng.uniform(0.15, 0.6) * FS)
        seg = slice(pos, min(pos + length, n_total))
        tt = t[seg] - t[pos]
        env = np.minimum(1.0, tt / 0.01) * np.exp(-tt * rng.uniform(0.5, 4))
        if rng.random() < 0.7:
            root = 220 * 2 ** (rng.integers(0, 24) / 12)
            for semis in rng.choice([0, 3, 4, 7, 10, 12, 16], size=3, replace=False):
                f0 = root * 2 ** (semis / 12)
                for h in range(1, 5):
                    if f0 * h < 3800:
                        out[seg] += env * 2500 / h * np.sin(2 * np.pi * f0 * h * tt + rng.uniform(0, 6.28))
        else:
            f0, f1 = rng.uniform(300, 1800, size=2)
            inst = f0 + (f1 - f0) * tt / max(tt[-1], 1e-3)
            for h in (1, 2):
                out[seg] += env * 4000 / h * np.sin(2 * np.pi * h * np.cumsum(inst) / FS)
        pos += length
    return out


def espeak_corpus(workdir: Path, langs: tuple[str, ...] = ("en", "fr", "de", "es")) -> dict[str, np.ndarray]:
    """Speech synthesised with espeak-ng, resampled to 8 kHz mono 16-bit by sox."""
    out = {}
    for lang in langs:
        raw, wav = workdir / f"{lang}-raw.wav", workdir / f"{lang}.wav"
        subprocess.run(["espeak-ng", "-v", lang, "-w", str(raw), SPEECH_TEXTS[lang]], check=True, capture_output=True)
        subprocess.run(
            ["sox", "-V1", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(wav)], check=True, capture_output=True
        )
        out[lang] = read_wav(wav)
    return out


def multimon_digits(samples: np.ndarray, multimon: str | None = None) -> str:
    """Digits that multimon-ng (an independent decoder) reads from 8 kHz PCM.

    Both tools must succeed (check=True) and the input must hold audio: a decoder
    that failed, or had nothing to read, must never pass for "no digit heard"."""
    assert samples.size, "nothing to decode: an empty recording reads as no digit"
    multimon = multimon or require_binary("multimon-ng")
    sox = require_binary("sox")
    with tempfile.TemporaryDirectory() as tmp:
        wav, raw = Path(tmp) / "in.wav", Path(tmp) / "in.raw"
        write_wav(wav, samples)
        # multimon-ng's raw input is 22050 Hz signed 16-bit mono.
        subprocess.run(
            [sox, "-V1", str(wav), "-t", "raw", "-r", "22050", "-e", "signed", "-b", "16", "-c", "1", str(raw)],
            check=True,
        )
        res = subprocess.run(
            [multimon, "-q", "-c", "-a", "DTMF", "-t", "raw", str(raw)], capture_output=True, text=True, check=True
        )
    return "".join(line.split(":", 1)[1].strip() for line in res.stdout.splitlines() if line.startswith("DTMF:"))


def assert_no_digit_heard(heard: np.ndarray, sent: np.ndarray, keys: str) -> None:
    """What a leg recorded (`heard`) decodes to no digit, and the check can fail:
    the recording is at least 0.8x as long as the caller's audio (`sent`), and
    multimon-ng reads `keys` from that unmasked audio (the positive control)."""
    assert heard.size >= 0.8 * sent.size, f"recorded {heard.size} samples, the caller sent {sent.size}"
    assert np.any(heard), "the recording is all zeros"
    assert multimon_digits(sent) == keys, "positive control: multimon-ng reads the caller's own keys"
    assert multimon_digits(heard) == ""


def band_share(samples: np.ndarray, hz: float, width: float = 30.0) -> float:
    """Share of the signal's energy within `width` Hz of `hz` (0 for silence)."""
    spectrum = np.abs(np.fft.rfft(samples.astype(float))) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / FS)
    return float(spectrum[np.abs(freqs - hz) < width].sum() / max(spectrum.sum(), 1e-9))
