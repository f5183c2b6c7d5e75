"""Gateway adapter tests, and the one check they all use for card-data leaks."""

from __future__ import annotations

import re
import traceback
from typing import Any

# Object reprs carry memory addresses ("at 0x7f837..."), frame locals times and timeouts
# ("deadline=5521.98376"), and the test servers' random ports ("127.0.0.1:58371",
# "('127.0.0.1', 58371)"): digits that may spell a CVV by chance. A card number is none of them.
ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
DECIMAL = re.compile(r"\d+\.\d+")
LOOPBACK_PORT = re.compile(r"(127\.0\.0\.1|localhost|::1)(:|', )\d+")


def assert_no_card_data(thing: Any, *secrets: str) -> None:
    """No PAN/CVV in a result's or error's repr/str, its traceback text, its
    chained exceptions, or the locals of the gateway frames it passed through."""
    texts = [repr(thing), str(thing)]
    if isinstance(thing, BaseException):
        texts.append("".join(traceback.format_exception(thing)))
        assert thing.__cause__ is None and (thing.__context__ is None or thing.__suppress_context__)
        tb = thing.__traceback__
        while tb is not None:
            if "/gateways/" in tb.tb_frame.f_code.co_filename and "/tests/" not in tb.tb_frame.f_code.co_filename:
                texts += [f"{name}={value!r}" for name, value in tb.tb_frame.f_locals.items()]
            tb = tb.tb_next
    for text in texts:
        text = DECIMAL.sub("…", ADDRESS.sub("0x…", LOOPBACK_PORT.sub(r"\1\2…", text)))
        for secret in secrets:
            assert secret not in text, "card data leaked"
