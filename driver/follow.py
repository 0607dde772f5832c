"""The driver's resume logic, as pure code over decoded frames.

Between the frame decoder and the replica. It checks the frame sequence of
the current Subscribe call (a drop, replay or reorder shows as a gap),
stages the frames of a batch until the one that carries commit_position,
and hands out whole batches to apply. It also knows what to ask for when
(re)subscribing: the stream identity and the last applied position. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.errors import FrameError, ReplayedFrameError, SequenceGapError
from prism.fabric.frames import DecodedFrame


@dataclass
class Batch:
    """Frames that take the replica to `position` at a transaction boundary.
    `reset`: they make a whole new replica (bootstrap) of `stream_id`."""

    reset: bool
    stream_id: str
    position: int
    head: int
    commit_time_us: int
    frames: list[DecodedFrame]


@dataclass
class Follower:
    stream_id: str = ""
    position: int = 0  # last applied position
    head: int = 0  # wrapper head last heard of
    _expected_seq: int = 1
    _staging: list[DecodedFrame] = field(default_factory=list)
    _resetting: bool = False
    _reset_stream: str = ""

    def new_call(self) -> tuple[str, int]:
        """Start of a Subscribe call: drop anything half-received and say
        where to resume from."""
        self._expected_seq = 1
        self._staging = []
        self._resetting = False
        return self.stream_id, self.position

    def on_frame(self, f: DecodedFrame) -> Batch | None:
        if f.sequence != self._expected_seq:
            raise SequenceGapError(
                f"frame sequence {f.sequence}, expected {self._expected_seq}: "
                "a frame was dropped, replayed or reordered"
            )
        self._expected_seq += 1
        self.head = (
            max(self.head, f.head_position) if f.stream_id == self.stream_id else (f.head_position)
        )
        if f.kind == pb.HEARTBEAT:
            return None
        if f.kind == pb.RESET:
            self._resetting = True
            self._reset_stream = f.stream_id
            self._staging = []
            return None
        if f.kind != pb.CHANGES:
            raise FrameError(f"unknown frame kind {f.kind}")
        expected_stream = self._reset_stream if self._resetting else self.stream_id
        if f.stream_id != expected_stream:
            raise FrameError(f"frame of stream {f.stream_id!r} while following {expected_stream!r}")
        if not self._resetting and f.positions.size and int(f.positions[0]) <= self.position:
            raise ReplayedFrameError(
                f"frame replays position {int(f.positions[0])} at or below the applied "
                f"position {self.position}"
            )
        if not f.commit_position and not self._resetting and not f.vectors.flags.owndata:
            # Held until its transaction's last frame comes: keep its vectors,
            # not the whole received message a large frame's are read from
            # (prism.fabric.frameview).
            f.vectors = f.vectors.copy()
        self._staging.append(f)
        if not f.commit_position:
            return None
        batch = Batch(
            reset=self._resetting,
            stream_id=expected_stream,
            position=f.commit_position,
            head=f.head_position,
            commit_time_us=f.commit_time_us,
            frames=self._staging,
        )
        self._staging = []
        self._resetting = False
        return batch

    @property
    def resetting(self) -> bool:
        """Inside a bootstrap (between RESET and its committing frame)."""
        return self._resetting

    def take_bootstrap_frames(self) -> list[DecodedFrame]:
        """The bootstrap frames staged so far, handed over to be applied to
        the replica built aside (ReplicaFeed); none outside a bootstrap,
        where staging must wait for the transaction boundary."""
        if not self._resetting:
            return []
        frames, self._staging = self._staging, []
        return frames

    def committed(self, batch: Batch) -> None:
        """The replica now shows batch; later resumes start after it."""
        self.stream_id = batch.stream_id
        self.position = batch.position
