"""The errors the state store raises; every message is one line."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A state store operation failed; the message is one line."""


class LeaseLost(StoreError):
    """The caller's lease was superseded by a newer generation (fencing)."""


class NoValidState(StoreError):
    """Committed states exist under a prefix but none of them verifies."""


class CorruptState(StoreError):
    """A committed state failed verification: ``attempt`` is the one to quarantine,
    ``reason`` says why without the leading "state <key> (<attempt>): "."""

    def __init__(self, message: str, *, attempt: str, reason: str | None = None):
        super().__init__(message)
        self.attempt = attempt
        self.reason = reason if reason is not None else message


class AlreadyQuarantined(StoreError):
    """The committed attempt of a key was quarantined earlier."""


class NewerFormat(StoreError):
    """A state, COMMIT or manifest was written in a newer layout than this rmrun reads: the
    run stops and changes nothing (an older rmrun must never rewrite what a newer one wrote)."""


class StoreUnreachable(StoreError):
    """The store did not answer within the retry budget (connection errors, timeouts, 5xx,
    throttling): what is committed is intact, and a later start resumes from it."""
