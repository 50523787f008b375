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
