from __future__ import annotations

import numpy as np
import pytest

from tests.media.signals import espeak_corpus
from tests.support import require_binary


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> dict[str, np.ndarray]:
    """espeak-ng speech in four languages, 8 kHz int16 (made at test time)."""
    require_binary("espeak-ng")
    require_binary("sox")
    return espeak_corpus(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="session")
def multimon() -> str:
    require_binary("sox")
    return require_binary("multimon-ng")
