"""The driver's key-rotation cache: which key epochs a frame may be sealed
with, and the sealer of each.

Between the frame decoder (prism.fabric.frames asks for a frame's sealer)
and the subscription, which adopts Hello's epoch at each handshake and
rotates when a frame of a newer epoch verified. Pure logic over the tenant
secret; no I/O.
"""

from __future__ import annotations

import logging

from prism.fabric.errors import ExpiredEpochError, UnknownEpochError
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.sealing import Sealer

log = logging.getLogger("prism.driver")

# How many key epochs past the newest verified one a frame may claim: the
# wrapper rotates at most once per rotate-keys or rotation period, so more
# means a forged or foreign frame. The driver then resumes and learns the
# wrapper's current epoch from Hello.
MAX_EPOCH_AHEAD = 16


class EpochSealers:
    def __init__(self, tenant_id: str, secret: bytes) -> None:
        self.tenant_id = tenant_id
        self.epoch = 0  # the newest epoch verified (Hello's, or a frame's)
        self._secret = secret
        self._sealers: dict[tuple[int, int], Sealer] = {}

    def restart(self, epoch: int, secret: bytes) -> None:
        """A handshake: the wrapper's current epoch under the secret the
        driver authenticated with (which may have been re-read from disk)."""
        self.epoch = epoch
        self._secret = secret
        self._sealers = {}

    def sealer(self, epoch: int, dim: int) -> Sealer:
        """The keys of a frame's epoch: the newest verified one or a later one
        (rotation); never an older one (a replay of an old frame)."""
        if epoch < self.epoch:
            raise ExpiredEpochError(
                f"frame sealed with key epoch {epoch}, older than the current epoch {self.epoch}"
            )
        if epoch > self.epoch + MAX_EPOCH_AHEAD:
            raise UnknownEpochError(
                f"frame claims key epoch {epoch}, more than {MAX_EPOCH_AHEAD} past the current "
                f"epoch {self.epoch}"
            )
        s = self._sealers.get((epoch, dim))
        if s is None:
            keys = derive_epoch_keys(self._secret, self.tenant_id, epoch)
            s = self._sealers[(epoch, dim)] = Sealer(keys, dim)
        return s

    def rotate_to(self, epoch: int) -> None:
        """A verified frame of a newer epoch: the wrapper rotated its keys.
        Older epochs are refused from now on."""
        log.info("key epoch %d -> %d", self.epoch, epoch)
        self.epoch = epoch
        self._sealers = {k: v for k, v in self._sealers.items() if k[0] >= epoch}
