"""The bot runtime an emulator uses: started on first use (its Node workers cost a second), or one given (tests and
benchmarks share one), which the emulator then does not close."""

from __future__ import annotations

import threading
from typing import Any

from .pool import BotRuntime


class LazyRuntime:
    def __init__(self, options: dict[str, Any], given: BotRuntime | None = None):
        self._options = options
        self._runtime = given
        self._owned = given is None
        self._lock = threading.Lock()

    def get(self) -> BotRuntime:
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    self._runtime = BotRuntime(**self._options)
        return self._runtime

    def close(self) -> None:
        """Stop the workers if this emulator started them."""
        if self._owned and self._runtime is not None:
            self._runtime.close()
