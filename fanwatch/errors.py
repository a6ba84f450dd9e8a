"""Errors that end in one readable line for the user, never a traceback."""

from __future__ import annotations


class FanwatchError(Exception):
    """A problem the user can fix; its message is one sentence shown as is."""


class BadAudioError(FanwatchError):
    """One audio file that cannot be used; carries the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
