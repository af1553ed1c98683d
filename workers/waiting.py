"""One warning when a background loop (the batch and benchmark runners) starts waiting on something, one line
when it goes on, and nothing in between however often it retries."""

from __future__ import annotations

import logging


class Waiting:
    def __init__(self, log: logging.Logger, who: str):
        self.log, self.who = log, who
        self.on: str | None = None  # what it waits for now

    def trouble(self, what: str) -> None:
        if self.on != what:
            self.log.warning("%s waiting: %s", self.who, what)
        self.on = what

    def ok(self) -> None:
        if self.on is not None:
            self.log.info("%s going on after %s", self.who, self.on)
            self.on = None
