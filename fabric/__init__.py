"""prism.fabric: what the wrapper and the driver share.

Frame codec, sealing (secret file, HKDF keys, keyed orthogonal matrix, HMAC
watermark), the tenant's keyed projection, the text embedder, the row payload
codec, and the generated gRPC stubs of proto/prism/fabric/v1/wrapper.proto.
"""

from prism.fabric.errors import FabricError, FrameError, PrismError, WatermarkError

# Protocol 2: challenge-response authentication, sessions, AEAD-sealed rows.
# Frame format 3: one sealed frame for every subscriber, bound to each call by
# its envelope MAC; MessagePack rows (prism.fabric.rowcodec). Frame format 4:
# sealed_rows also carry the key each upsert replaced on a primary-key change.
# Frame format 5: the watermark signs a GMAC digest of canonical(frame) instead
# of hashing the whole frame with SHA-256 (prism.fabric.frames.frame_watermark).
PROTOCOL_VERSION = 2
FRAME_FORMAT_VERSION = 5
# Formats this release reads and writes: a wrapper sends an older driver the
# format it asked for (SubscribeRequest.frame_format), and a driver reads an
# older wrapper's frames, so either side may be upgraded first.
FRAME_FORMATS = frozenset({3, 4, 5})

__all__ = [
    "FRAME_FORMATS",
    "FRAME_FORMAT_VERSION",
    "PROTOCOL_VERSION",
    "FabricError",
    "FrameError",
    "PrismError",
    "WatermarkError",
]
