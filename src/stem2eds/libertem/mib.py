"""Writing a scan as a Merlin (Quantum Detectors) MIB file with its ``.hdr``.

For replaying a scan through libertem-live's Merlin simulator
(``libertem_live.detectors.merlin.sim``) in tests, benchmarks and
demonstrations: each frame is a 384-byte ASCII header and big-endian
counts, as the detector's TCP stream and LiberTEM's MIB reader expect.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: MIB frame header size in bytes (single chip, "MQ1" headers).
HEADER_BYTES = 384
_TYPES = {1: ("U08", 6), 2: ("U16", 12), 4: ("U32", 24)}


def _frame_header(index: int, shape: tuple[int, int], mib_type: str, depth: int) -> bytes:
    fields = ["MQ1", f"{index:06d}", f"{HEADER_BYTES:05d}", "01", f"{shape[1]:04d}",
              f"{shape[0]:04d}", mib_type, "   1x1", "01", "2026-01-01 00:00:00.000000",
              "0.001000", "0", "0", "0", "1.200000E+2", "5.110000E+2", *["0.000000E+0"] * 6,
              "3RX", "175", *["511"] * 34, "0", "MQ1A", "2026-01-01T00:00:00.000000000Z",
              "1000000ns", str(depth), ""]
    text = ",".join(fields).encode("ascii")
    if len(text) > HEADER_BYTES:  # pragma: no cover - fixed fields
        raise ValueError("MIB header too long")
    return text + b"\0" * (HEADER_BYTES - len(text))


def write_mib(path: str | os.PathLike, frames: np.ndarray) -> Path:
    """Write a scan (Rx, Ry, Qx, Qy) of unsigned counts as ``path`` (.mib) and its ``.hdr``.

    Parameters
    ----------
    path : path-like
        The ``.mib`` file; the ``.hdr`` is written beside it (same stem).
    frames : ndarray, shape (Rx, Ry, Qx, Qy), uint8, uint16 or uint32

    Returns
    -------
    Path
        The ``.hdr`` file (what LiberTEM and the simulator open).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype.kind != "u" or frames.dtype.itemsize not in _TYPES:
        raise ValueError("frames must be (Rx, Ry, Qx, Qy) of uint8, uint16 or uint32")
    mib_type, depth = _TYPES[frames.dtype.itemsize]
    rx, ry, qx, qy = frames.shape
    path = Path(path)
    big = frames.reshape(-1, qx, qy).astype(frames.dtype.newbyteorder(">"))
    with open(path, "wb") as f:
        for i, frame in enumerate(big):
            f.write(_frame_header(i + 1, (qx, qy), mib_type, depth))
            f.write(frame.tobytes())
    hdr = path.with_suffix(".hdr")
    hdr.write_text("HDR,\t\n"
                   f"Frames in Acquisition (Number):\t{rx * ry}\n"
                   f"Frames per Trigger (Number):\t{ry}\n"
                   f"Counter Depth (number):\t{depth}\n"
                   f"ScanX:\t{ry}\nScanY:\t{rx}\n"
                   "End\t", encoding="ascii")
    return hdr
