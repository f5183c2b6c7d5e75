"""Talk-off: speech (espeak-ng, 4 languages) and synthetic music give no digit."""

from __future__ import annotations

import numpy as np
import pytest

from media.dtmf import BatchDtmfDetector, detect
from tests.media.signals import music, to_pcm


@pytest.mark.parametrize("gain", [0.3, 1.0, 3.0])
def test_speech_gives_no_digit(speech, gain):
    for lang, x in speech.items():
        assert detect(to_pcm(x * gain)) == [], lang


def test_speech_with_noise_gives_no_digit(speech):
    rng = np.random.default_rng(1)
    for lang, x in speech.items():
        noisy = x + rng.normal(0, 0.1 * np.std(x), x.size)
        assert detect(to_pcm(noisy)) == [], lang


def test_music_gives_no_digit():
    # 8 minutes of chords and glides, checked with the batched receiver.
    n, seconds = 16, 30
    pcm = np.stack([to_pcm(music(seconds, np.random.default_rng(seed))) for seed in range(n)])
    det = BatchDtmfDetector(n)
    found = det.feed(pcm)
    found = [a + b for a, b in zip(found, det.flush(), strict=True)]
    assert found == [[] for _ in range(n)]
