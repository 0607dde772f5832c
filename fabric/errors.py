"""The exception root shared by every prism package.

Each package has its own root below PrismError (WrapperError, DriverError),
and errors from psycopg, gRPC or the OS are translated into these at the
boundary where they occur. `retriable` tells a caller whether trying again
later can succeed (a dropped connection) or not (a wrong secret, bad config).
"""

from __future__ import annotations


class PrismError(Exception):
    """Root of every error raised by prismlib."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class FabricError(PrismError):
    """An error in code shared by wrapper and driver (frames, keys, codecs)."""


class SecretFileError(FabricError):
    """The tenant secret file is missing, unreadable, too short or too open."""


class FrameError(FabricError):
    """A frame is malformed or its watermark does not verify. The receiver
    drops it whole and resumes from its last good position."""

    retriable = True


class WatermarkError(FrameError):
    """The frame's HMAC-SHA256 watermark does not match its contents."""


class PayloadError(FabricError):
    """A row payload cannot be encoded or decoded."""


class ReplayedFrameError(FrameError):
    """A frame that verifies but was sent to another Subscribe call, or
    repeats a position already applied: a replay."""


class SealedRowsError(FrameError):
    """A frame's sealed_rows fail AES-GCM authentication: they were changed,
    or moved from another frame (the associated data binds them to it)."""


class SequenceGapError(FrameError):
    """A frame's sequence number is not the next one of its Subscribe call:
    a frame was dropped, replayed or reordered on the way."""


class EpochError(FrameError):
    """A frame is sealed with a key epoch the receiver does not accept."""


class ExpiredEpochError(EpochError):
    """The frame's key epoch is older than the newest one this receiver has
    verified: keys rotated past it, so it is a replay or a stale frame."""


class UnknownEpochError(EpochError):
    """The frame's key epoch is further ahead than the wrapper can have
    rotated to; the wrapper did not announce it."""


class AuthError(FabricError):
    """A handshake value (nonce, proof, wrapped key) is malformed or does not
    verify against the tenant secret."""
