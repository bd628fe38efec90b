"""Logging that a flood of remote events cannot turn into a flood of log records."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """At most `per_second` WARNING records a second; the rest are counted and summed up in the next
    record, so junk from peers (or a store that keeps failing) cannot flood the log."""

    def __init__(self, logger: logging.Logger, per_second: int = 10) -> None:
        self.logger = logger
        self.per_second = per_second
        self._window = 0
        self._count = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        second = int(time.monotonic())
        if second != self._window:
            self._window, self._count = second, 0
        self._count += 1
        if self._count > self.per_second:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self.logger.warning(message, *args)


_told: set[str] = set()  # the keys `warn_once` has logged in this process


def warn_once(logger: logging.Logger, key: str, message: str, *args: object) -> bool:
    """Log `message` at WARNING the first time `key` is told in this process, and never again: a
    condition that holds for the whole run (a nats-py internal that is not as expected) is said once,
    not per connection or per message. Whether it was logged now."""
    if key in _told:
        return False
    _told.add(key)
    logger.warning(message, *args)
    return True
