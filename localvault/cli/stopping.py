"""How a long command is stopped from outside: SIGTERM (``kill``, a service manager, ``timeout``) and SIGHUP (its
terminal closed) end it as Ctrl-C does, with its summary and what was kept, not a silent death."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM, and SIGHUP (its terminal closed), raise KeyboardInterrupt in the main thread until the block
    ends (then the old handlers are back). A SIGHUP ignored (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():  # (an app running the CLI in a thread)
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt)}
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
