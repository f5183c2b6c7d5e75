"""The media hub's lock must never be needed from the worker's event loop.

press_key holds the hub's lock while it publishes through async_to_sync, which
waits for the event loop; if the loop in turn waited for the lock (as the media
worker's tick once did through is_linked), both would stop for good.
"""

from __future__ import annotations

import threading

from securepay.live import MediaHub


def test_is_linked_answers_while_another_thread_holds_the_hub_lock():
    hub = MediaHub()
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with hub._lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_lock, daemon=True)
    holder.start()
    assert holding.wait(5)
    answers: list[bool] = []
    asker = threading.Thread(target=lambda: answers.append(hub.is_linked("some-session")), daemon=True)
    asker.start()
    asker.join(2)
    deadlocked = asker.is_alive()
    release.set()
    holder.join(5)
    assert not deadlocked, "is_linked waited for the lock that press_key holds while publishing"
    assert answers == [False]
