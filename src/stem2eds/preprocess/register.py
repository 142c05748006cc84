"""Registration of EDS/HAADF maps onto the 4D-STEM scan grid.

EDS and HAADF are often recorded with another pixel size, field of view or
offset than the 4D-STEM scan. The maps are first resampled to the scan's
pixel size, then the offset is found by phase correlation
(:func:`skimage.registration.phase_cross_correlation`, sub-pixel by
upsampling) between a reference map (HAADF, or the map of the heaviest
element, whose Z-contrast resembles ADF) and a virtual ADF image computed from
the diffraction patterns, and finally every map is sampled on the scan grid.

Storage in a raw bundle (written by whoever makes the bundle; ``bundle.py``
requires maps in ``eds/`` to match the scan, so these live apart):

- ``eds_unregistered/<El>``: (H, W) float32 atomic fractions, group attribute
  ``pixel_size`` in the bundle's ``r_pixel_unit``;
- ``haadf_unregistered``: (H, W) float32, attribute ``pixel_size``.

Not handled: drift within a map (shear/stretch along the slow scan
direction); only a rigid offset plus the pixel-size ratio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..formats.bundle import ScanBundle
from ..elements import atomic_number
from ..errors import InputError
from .patterns import detector_centre
from .settings import EDS_UNREGISTERED, HAADF_UNREGISTERED


def annular_sum(centred: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """Virtual annular detector: sum of each centred pattern between two radii (px).

    Parameters
    ----------
    centred : ndarray, shape (n, Qx, Qy)
        Patterns with the origin at the detector centre.
    inner, outer : float
        Radii in detector px (inner inclusive-excluded, outer included).

    Returns
    -------
    ndarray, shape (n,), float64
    """
    n, qx, qy = centred.shape
    cr, cc = detector_centre((qx, qy))
    r = np.hypot(np.arange(qx)[:, None] - cr, np.arange(qy)[None, :] - cc)
    mask = ((r > inner) & (r <= outer)).ravel()
    return centred.reshape(n, -1)[:, mask].sum(axis=1, dtype=np.float64)


def resample_maps(maps: np.ndarray, map_pixel_size: float, scan_pixel_size: float,
                  grid_shape: tuple[int, int], offset: tuple[float, float] = (0.0, 0.0)
                  ) -> np.ndarray:
    """Sample maps on a scan grid (bilinear).

    Scan pixel ``(i, j)`` sits at map position
    ``((i, j) + offset) * scan_pixel_size / map_pixel_size`` (map pixels);
    positions outside the map take the nearest edge value.

    Parameters
    ----------
    maps : ndarray, shape (E, H, W)
    map_pixel_size, scan_pixel_size : float
        In the same length unit.
    grid_shape : (Rx, Ry)
    offset : (float, float)
        Position of scan pixel (0, 0) on the map, in scan pixels.

    Returns
    -------
    ndarray, shape (E, Rx, Ry), float32
    """
    maps = np.asarray(maps, dtype=np.float32)
    ratio = float(scan_pixel_size) / float(map_pixel_size)
    rr = (np.arange(grid_shape[0]) + offset[0]) * ratio
    cc = (np.arange(grid_shape[1]) + offset[1]) * ratio
    coords = np.stack(np.meshgrid(rr, cc, indexing="ij"))
    out = [ndimage.map_coordinates(m, coords, order=1, mode="nearest") for m in maps]
    return np.stack(out).astype(np.float32)


@dataclass
class Registration:
    """Where the maps sit relative to the scan.

    Attributes
    ----------
    offset : (float, float)
        Position of scan pixel (0, 0) of the (cropped) scan on the map, in
        scan pixels (row, column).
    pixel_ratio : float
        Scan pixel size / map pixel size.
    error : float
        Phase-correlation error of skimage (0 = perfect match).
    coverage : float
        Fraction of scan pixels that fall inside the map.
    reference : str
        Which map was aligned to the virtual ADF image.
    """

    offset: tuple[float, float]
    pixel_ratio: float
    error: float
    coverage: float
    reference: str

    def to_dict(self) -> dict:
        out = asdict(self)
        out["offset"] = [float(v) for v in self.offset]
        return out


def _standardise(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    std = image.std()
    return (image - image.mean()) / (std if std > 0 else 1.0)


def find_offset(reference_map: np.ndarray, map_pixel_size: float, scan_image: np.ndarray,
                scan_pixel_size: float, upsample: int = 20) -> tuple[tuple[float, float], float]:
    """Offset of the scan image on a map of another pixel size, by phase correlation.

    The map is resampled to the scan pixel size over its whole field of view;
    both images are standardised (zero mean, unit variance) and zero-padded to
    a common shape, so the scan may lie anywhere inside a larger map.

    Parameters
    ----------
    reference_map : ndarray, shape (H, W)
        HAADF (or a Z-contrast-like element map).
    map_pixel_size : float
    scan_image : ndarray, shape (Rx, Ry)
        Virtual ADF image of the scan.
    scan_pixel_size : float
    upsample : int
        Sub-pixel precision 1/upsample scan pixels.

    Returns
    -------
    offset : (float, float)
        Position of scan pixel (0, 0) on the map, in scan pixels.
    error : float
    """
    from skimage.filters import window
    from skimage.registration import phase_cross_correlation

    ratio = float(scan_pixel_size) / float(map_pixel_size)
    h, w = reference_map.shape
    full = (int(np.ceil(h / ratio)), int(np.ceil(w / ratio)))
    on_scan_px = resample_maps(reference_map[None], map_pixel_size, scan_pixel_size, full)[0]
    shape = (max(full[0], scan_image.shape[0]), max(full[1], scan_image.shape[1]))
    a = np.zeros(shape)
    b = np.zeros(shape)
    a[:full[0], :full[1]] = _standardise(on_scan_px)
    b[:scan_image.shape[0], :scan_image.shape[1]] = _standardise(scan_image)
    mask_a = np.zeros(shape, bool)
    mask_a[:full[0], :full[1]] = True
    mask_b = np.zeros(shape, bool)
    mask_b[:scan_image.shape[0], :scan_image.shape[1]] = True
    # 1) whole-pixel offset anywhere in the map, by masked normalised
    # cross-correlation (Padfield), which does not favour large overlaps of
    # the zero padding: a(x) ~ b(x - shift), i.e. scan pixel y lies at
    # map-grid position y + shift
    overlap = 0.9 * mask_b.sum() / mask_a.sum()
    shift = phase_cross_correlation(a, b, reference_mask=mask_a, moving_mask=mask_b,
                                    overlap_ratio=min(overlap, 0.9))[0]
    offset = np.asarray(shift, dtype=np.float64)
    # 2) sub-pixel refinement on equal-size, fully overlapping images: the
    # map resampled at the current offset against the scan image, both
    # tapered by a Hann window so the periodic correlation sees no edges
    taper = window("hann", scan_image.shape)
    moving = _standardise(scan_image) * taper
    for _ in range(2):
        crop = resample_maps(reference_map[None], map_pixel_size, scan_pixel_size,
                             scan_image.shape, tuple(offset))[0]
        delta, error, _ = phase_cross_correlation(_standardise(crop) * taper, moving,
                                                  upsample_factor=upsample,
                                                  normalization=None)
        offset = offset + delta
    return (float(offset[0]), float(offset[1])), float(error)


def register_maps(maps: np.ndarray, reference_map: np.ndarray, map_pixel_size: float,
                  scan_image: np.ndarray, scan_pixel_size: float, upsample: int = 20,
                  reference: str = "haadf") -> tuple[np.ndarray, Registration]:
    """Resample maps onto the scan grid, aligned to a virtual image of the scan.

    Parameters
    ----------
    maps : ndarray, shape (E, H, W)
        Maps on their own grid (e.g. EDS atomic fractions and HAADF).
    reference_map : ndarray, shape (H, W)
    map_pixel_size, scan_pixel_size : float
        Same length unit.
    scan_image : ndarray, shape (Rx, Ry)
        Virtual ADF image computed from the diffraction data.
    upsample : int
    reference : str
        Name of the reference, for the record.

    Returns
    -------
    registered : ndarray, shape (E, Rx, Ry), float32
    Registration
    """
    offset, error = find_offset(reference_map, map_pixel_size, scan_image, scan_pixel_size,
                                upsample)
    registered = resample_maps(maps, map_pixel_size, scan_pixel_size, scan_image.shape, offset)
    ratio = float(scan_pixel_size) / float(map_pixel_size)
    h, w = np.asarray(reference_map).shape
    rr = (np.arange(scan_image.shape[0]) + offset[0]) * ratio
    cc = (np.arange(scan_image.shape[1]) + offset[1]) * ratio
    inside = (((rr >= -0.5) & (rr <= h - 0.5))[:, None] & ((cc >= -0.5) & (cc <= w - 0.5))[None])
    return registered, Registration(offset, ratio, error, float(inside.mean()), reference)


def load_unregistered(scan: ScanBundle) -> tuple[np.ndarray, list[str], float]:
    """Read and check the maps a raw bundle stores off the scan grid.

    Returns
    -------
    maps : ndarray, shape (M, H, W)
        ``eds_unregistered/<El>`` in bundle element order, then
        ``haadf_unregistered`` when present.
    names : list of str
        Element symbols, and ``"haadf"``.
    pixel_size : float
        Map pixel size in the bundle's ``r_pixel_unit``.

    Raises
    ------
    InputError
        Missing maps, elements or ``pixel_size``, or EDS and HAADF on different grids.
    """
    f = scan.file
    if EDS_UNREGISTERED not in f and HAADF_UNREGISTERED not in f:
        raise InputError(f"registration (`register`) needs maps in '{EDS_UNREGISTERED}' or "
                         f"'{HAADF_UNREGISTERED}'", path=scan.path)
    stack, names, px = [], [], None

    def pixel_size(obj, what):
        if "pixel_size" not in obj.attrs:
            raise InputError(f"{what} has no 'pixel_size' attribute", path=scan.path,
                             hint="store the map pixel size in the bundle's r_pixel_unit")
        value = float(obj.attrs["pixel_size"])
        if not value > 0:
            raise InputError(f"{what} pixel_size must be positive, got {value}", path=scan.path)
        return value

    if EDS_UNREGISTERED in f:
        grp = f[EDS_UNREGISTERED]
        px = pixel_size(grp, EDS_UNREGISTERED)
        missing = [e for e in scan.elements if e not in grp]
        if missing:
            raise InputError(f"{EDS_UNREGISTERED} lacks {','.join(missing)}", path=scan.path)
        for e in scan.elements:
            stack.append(grp[e][()])
            names.append(e)
    if HAADF_UNREGISTERED in f:
        hpx = pixel_size(f[HAADF_UNREGISTERED], HAADF_UNREGISTERED)
        if px is not None and (abs(hpx - px) > 1e-9 * px
                               or f[HAADF_UNREGISTERED].shape != stack[0].shape):
            raise InputError("haadf_unregistered and eds_unregistered differ in grid",
                             path=scan.path, hint="store them on one grid")
        px = hpx
        stack.append(f[HAADF_UNREGISTERED][()])
        names.append("haadf")
    shapes = {np.shape(m) for m in stack}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InputError(f"unregistered maps must be 2D and of one shape, got {sorted(shapes)}",
                         path=scan.path)
    return np.stack(stack).astype(np.float32), names, px


def register_bundle_maps(scan: ScanBundle, scan_image: np.ndarray
                         ) -> tuple[np.ndarray | None, np.ndarray | None, Registration]:
    """Register a raw bundle's ``eds_unregistered``/``haadf_unregistered`` maps.

    Parameters
    ----------
    scan : ScanBundle
    scan_image : ndarray, shape (Rx', Ry')
        Virtual ADF of the (cropped) scan region the maps are wanted on.

    Returns
    -------
    eds : ndarray (E, Rx', Ry') in [0, 1], or None
    haadf : ndarray (Rx', Ry'), or None
    Registration
    """
    maps, names, px = load_unregistered(scan)
    scan_px = scan.calibration.r_pixel_size
    if "haadf" in names:
        ref_index = names.index("haadf")
    else:
        ref_index = int(np.argmax([atomic_number(e) for e in names]))
    registered, reg = register_maps(maps, maps[ref_index], px, scan_image, scan_px,
                                    reference=names[ref_index])
    if reg.coverage < 0.999:
        raise InputError(f"after registration only {100 * reg.coverage:.1f} % of the scan "
                         "lies inside the EDS/HAADF maps", path=scan.path,
                         hint="crop the scan (`crop`) to the region the maps cover")
    n_eds = len(names) - ("haadf" in names)
    eds = np.clip(registered[:n_eds], 0, 1) if n_eds else None
    haadf = registered[names.index("haadf")] if "haadf" in names else None
    return eds, haadf, reg
