"""Settings of live prediction (no LiberTEM import: the CLI builds its options from them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

#: Detectors :func:`predict_live` connects to.
DETECTORS = ("merlin", "dectris", "memory")
FINALS = ("exact", "live")
#: Name of the prediction file in the output folder.
PREDICTION = "prediction.h5"
#: Name of the recording of the raw frames (``final="exact"``).
FRAMES = "frames.npy"


@dataclass
class LiveSettings:
    """How a live acquisition is received and predicted.

    Attributes
    ----------
    detector : {"merlin", "dectris", "memory"}
        Detector system to connect to (``memory``: frames already in memory, for tests).
    host : str
        Host of the detector's data (and control) server.
    port : int or None
        Data port (Merlin: 6342; Dectris: its REST API, 80); None: the detector's default.
    api_port : int or None
        Merlin control port (default 6341); Dectris: the ZeroMQ stream port (default 9999).
    scan_shape : (Rx, Ry) or None
        Scan shape of the acquisition (required for Merlin and Dectris).
    interval : float
        Seconds between rewrites of the partial prediction file.
    frames_per_partition : int or None
        Frames LiberTEM processes together (and so between updates of the maps); None: its default.
    final : {"exact", "live"}
        ``exact``: record the raw frames and recompute the maps at the end so they equal
        ``stem2eds predict``; ``live``: keep the maps made while acquiring.
    keep_frames : bool
        Keep the recorded raw frames (``frames.npy``) after the final maps are made.
    """

    detector: str = "merlin"
    host: str = "127.0.0.1"
    port: int | None = None
    api_port: int | None = None
    scan_shape: tuple[int, int] | None = None
    interval: float = 2.0
    frames_per_partition: int | None = None
    final: str = "exact"
    keep_frames: bool = False

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise InputError(f"unknown detector {self.detector!r}",
                             hint=f"choose one of {', '.join(DETECTORS)}")
        if self.final not in FINALS:
            raise InputError(f"unknown final {self.final!r}", hint=f"choose one of {', '.join(FINALS)}")
        if not self.interval > 0:
            raise InputError(f"`interval` must be positive, got {self.interval}")
        if self.frames_per_partition is not None and self.frames_per_partition < 1:
            raise InputError("`frames_per_partition` must be positive")
        if self.scan_shape is not None:
            self.scan_shape = tuple(int(v) for v in self.scan_shape)  # type: ignore[assignment]
