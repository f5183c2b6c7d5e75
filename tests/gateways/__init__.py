"""Gateway adapter tests, and the one check they all use for card-data leaks."""

from __future__ import annotations

import re
import traceback
from typing import Any

# Object reprs carry memory addresses ("at 0x7f837..."): hex digits that may spell a CVV.
ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


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
    for text in (ADDRESS.sub("0x…", text) for text in texts):
        for secret in secrets:
            assert secret not in text, "card data leaked"
