"""Ctrl-C for long jobs: the first one asks the job to stop at a safe point and save."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from octswap.cli.output import err

__all__ = ["stop_on_signal"]


@contextmanager
def stop_on_signal() -> Iterator[Callable[[], bool]]:
    """First Ctrl-C (or SIGTERM): finish the step, save, stop. A second Ctrl-C aborts at once.

    Yields:
        A function that says whether a stop was asked for.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    owner = os.getpid()

    def ask(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked DataLoader worker: the main process decides
            return
        if requested.is_set() and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        requested.set()
        err.print("octswap: stopping after this step and saving (Ctrl-C again to abort)", highlight=False)

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
