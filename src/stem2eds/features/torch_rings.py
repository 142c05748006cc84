"""The fused ring statistics in torch: raw patterns on the device -> ring statistics.

The same numbers as :func:`stem2eds.features.rings.ring_features` (within
float32 rounding) for a GPU, where a per-pixel kernel in Python is not an
option but batched matrix products are cheap. Per pattern the sub-pixel
shift followed by ``f x f`` binning is, per axis, a fixed (Q/f, Q) matrix
with one or two non-zeros per column (:func:`axis_matrices`, built for the
whole batch by one ``scatter_add``), so the binned, centred pattern is
``Wr @ P @ Wc.T``: two batched matmuls (``torch.bmm``). The beam disk is
zeroed first by a distance test against each origin; then scaling, the
division by the scale, the clip to [0, 1] and the ring statistics (a sum
by ring with ``index_add_``, and a
``scatter_reduce`` for the maximum, as :class:`stem2eds.models.rings.RingStatistics`).

Nothing here is CUDA-specific: the tests run it on CPU tensors.
"""

from __future__ import annotations

import torch

from .rings import STATISTICS, RingGeometry


def axis_matrices(whole: torch.Tensor, frac: torch.Tensor, q: int, f: int) -> torch.Tensor:
    """Per-pattern (Q/f, Q) matrices of centring by ``whole + frac`` px then binning by ``f``.

    Parameters
    ----------
    whole : Tensor, shape (n,), int64
        Whole-pixel part of each pattern's shift along this axis.
    frac : Tensor, shape (n,), float32
        Fractional part, in [0, 1).
    q : int
        Detector size along the axis.
    f : int
        Bin factor.

    Returns
    -------
    Tensor, shape (n, Q/f, Q), float32
        Row ``J``, column ``p``: the weight of raw row ``p`` in binned row ``J``.
    """
    n = whole.shape[0]
    b = q // f
    p = torch.arange(q, device=whole.device)
    out = torch.zeros(n, b + 1, q, dtype=torch.float32, device=whole.device)
    for lag, weight in ((0, 1 - frac), (1, frac)):
        i = p[None, :] - whole[:, None] - lag              # output row of raw row p
        block = torch.where((i >= 0) & (i < q), torch.div(i, f, rounding_mode="floor"),
                            torch.full_like(i, b))        # b: a dummy row, dropped
        out.scatter_add_(1, block[:, None, :],
                         weight[:, None, None].expand(n, 1, q).to(torch.float32))
    return out[:, :b]


def ring_statistics_torch(raw: torch.Tensor, origins: torch.Tensor,
                          geometry: RingGeometry) -> torch.Tensor:
    """Ring statistics of raw patterns about their origins, in torch.

    Parameters
    ----------
    raw : Tensor, shape (n, Qx, Qy)
        Raw counts (any dtype), on any device.
    origins : Tensor, shape (n, 2)
        Fitted origins, raw px (float64 preferred: the disk test is done in it).
    geometry : RingGeometry

    Returns
    -------
    Tensor, shape (n, S, R), float32
        Statistic-major, as :class:`stem2eds.models.rings.RingStatistics`;
        ``.reshape(n, -1)`` equals :func:`~stem2eds.features.ring_features`.
    """
    n, qx, qy = raw.shape
    f = geometry.bin_factor
    dev = raw.device
    origins = origins.to(device=dev, dtype=torch.float64).reshape(n, 2)
    centre = torch.tensor([(qx - 1) / 2, (qy - 1) / 2], dtype=torch.float64, device=dev)
    shift = origins - centre
    whole = torch.floor(shift)
    frac = (shift - whole).to(torch.float32)
    lim = max(qx, qy) + f
    whole = whole.clamp(-lim, lim).long()
    if raw.dtype == torch.uint16:  # few kernels take uint16 (on CUDA): widen via int16 bits
        raw = raw.view(torch.int16).to(torch.int32).bitwise_and(0xFFFF)
    x = raw.to(torch.float32)
    if geometry.beam_radius > 0:
        rr = (torch.arange(qx, device=dev, dtype=torch.float64)[None, :] - origins[:, :1]) ** 2
        cc = (torch.arange(qy, device=dev, dtype=torch.float64)[None, :] - origins[:, 1:]) ** 2
        disk = rr[:, :, None] + cc[:, None, :] <= geometry.beam_radius ** 2
        x = x.masked_fill(disk, 0.0)
    rows = axis_matrices(whole[:, 0], frac[:, 0], qx, f)
    cols = axis_matrices(whole[:, 1], frac[:, 1], qy, f)
    binned = torch.bmm(torch.bmm(rows, x), cols.transpose(1, 2))   # (n, Qx/f, Qy/f)
    if geometry.scaling == "sqrt":
        binned = torch.sqrt(binned.clamp(min=0))
    elif geometry.scaling == "log":
        binned = torch.log1p(binned.clamp(min=0))
    values = (binned / geometry.scale).reshape(n, -1)
    if geometry.dose_reference is None:
        values = values.clamp(0, 1)
    else:  # the ceiling follows each pattern's mean (preprocess.patterns.normalise)
        ceiling = (values.double().mean(dim=1, keepdim=True) / geometry.dose_reference)
        values = torch.minimum(values.clamp(min=0), ceiling.clamp(min=1).to(torch.float32))
    return _reduce(values, geometry)


def _reduce(values: torch.Tensor, geometry: RingGeometry) -> torch.Tensor:
    """(n, P) normalised binned values -> (n, S, R) ring statistics."""
    n = values.shape[0]
    index = torch.from_numpy(geometry.ring_index().ravel().copy()).to(values.device)
    rings = geometry.n_rings
    counts = torch.bincount(index, minlength=rings).clamp(min=1).to(torch.float64)
    total = torch.zeros(n, rings, dtype=torch.float64, device=values.device)
    total.index_add_(1, index, values.double())
    mean = total / counts
    out = []
    for name in geometry.statistics:
        if name == "mean":
            out.append(mean)
        elif name == "std":
            sq = torch.zeros_like(total).index_add_(1, index, values.double() ** 2) / counts
            out.append(torch.sqrt((sq - mean * mean).clamp(min=0) + 1e-12))
        else:
            peak = torch.zeros(n, rings, dtype=values.dtype, device=values.device)
            out.append(peak.scatter_reduce(1, index.expand(n, -1), values, reduce="amax",
                                           include_self=False).double())
    assert set(geometry.statistics) <= set(STATISTICS)
    return torch.stack(out, dim=1).to(torch.float32)
