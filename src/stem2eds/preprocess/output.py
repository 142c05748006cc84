"""What a preprocessed bundle holds besides the patterns, and reading it back.

The driver (:mod:`stem2eds.preprocess.pipeline`) writes the patterns; this
module writes the EDS targets and other maps on the cropped grid, the
origins and their fit, the last pass (normalising the written patterns),
and :func:`summarise` reads what was measured back.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..formats.bundle import CALIBRATION, EDS, EDS_RAW, HAADF, TRUTH, ScanBundle, open_bundle
from .maps import crop_maps, filter_maps, preprocess_maps
from .patterns import normalise
from .settings import PreprocessSettings


def summarise(path: str | os.PathLike) -> dict[str, Any]:
    """What preprocessing measured, read back from a preprocessed bundle.

    Returns
    -------
    dict
        ``scan_shape``, ``detector_shape`` (binned), ``origin_fit`` (method),
        ``origin_drift_px`` (peak-to-peak of the fitted origin, rows and
        columns), ``origin_rms_residual_px``, ``origin_outliers``,
        ``probe_radius_px``, ``beam_radius_px``, ``scale`` and, after
        registration, ``registration``.
    """
    with open_bundle(path) as pre:
        fit = pre.file[f"{CALIBRATION}/origin_fit"]
        cal = pre.file[CALIBRATION].attrs
        fitted = fit[()].reshape(-1, 2)
        out = {"scan_shape": list(pre.scan_shape), "detector_shape": list(pre.detector_shape),
               "origin_fit": str(fit.attrs["method"]),
               "origin_drift_px": [float(v) for v in np.ptp(fitted, axis=0)],
               "origin_rms_residual_px": float(fit.attrs["rms_residual_px"]),
               "origin_outliers": int(fit.attrs["n_outliers"]),
               "probe_radius_px": float(cal["probe_radius_px"]),
               "beam_radius_px": float(cal["beam_radius_px"]), "scale": float(cal["scale"])}
        registration = pre.json_attr("registration")
        if registration is not None:
            out["registration"] = registration
    return out


def normalise_in_place(ds, scale: float, batch: int,
                       dose_reference: float | None = None) -> None:
    """Pass 3: divide the written (binned) patterns by the scale, one block of rows at a time.

    Parameters
    ----------
    ds : h5py.Dataset, shape (Rx, Ry, Qx, Qy)
    scale : float
    batch : int
        Patterns per block (rounded down to whole rows, at least one).
    dose_reference : float or None
        Each pattern's clip ceiling follows its intensity
        (:func:`~stem2eds.preprocess.patterns.normalise`); None clips at 1.
    """
    rx, ry = ds.shape[:2]
    rows = max(1, batch // ry)
    for i in range(0, rx, rows):
        ds[i:i + rows] = normalise(ds[i:i + rows], scale, dose_reference)


def write_maps(scan: ScanBundle, builder, settings: PreprocessSettings, box, register: bool,
               adf: np.ndarray | None) -> None:
    """EDS targets (filtered), raw EDS, HAADF, truth and simulation records, on the cropped grid.

    Parameters
    ----------
    scan : ScanBundle
        The raw bundle.
    builder : BundleBuilder
        The preprocessed bundle being written.
    settings : PreprocessSettings
        ``eds_filter``, ``eds_kernel``, ``eds_sigma`` are used.
    box : (r0, r1, c0, c1)
        The scan region kept.
    register : bool
        Resample the unregistered maps onto the scan grid, aligned on ``adf``.
    adf : ndarray, shape (Rx' * Ry',), optional
        Virtual ADF of the region (flat), needed when registering.
    """
    elements = scan.elements
    eds_raw = blurred = haadf = None
    if register:
        from .register import register_bundle_maps

        shape = (box[1] - box[0], box[3] - box[2])
        eds_raw, haadf, reg = register_bundle_maps(scan, adf.reshape(shape))
        builder.set_attrs(registration=reg.to_dict())
        if eds_raw is not None:
            # registered maps are already on the cropped grid
            blurred = filter_maps(eds_raw, settings.eds_filter, settings.eds_kernel,
                                  settings.eds_sigma)
    # maps already on the scan grid (all of them, or those not registered)
    if eds_raw is None and EDS in scan.file and elements:
        raw_full = scan.eds()
        blurred = preprocess_maps(raw_full, settings)
        eds_raw = crop_maps(raw_full, box)
    if haadf is None and HAADF in scan.file:
        haadf = crop_maps(scan.haadf, box)
    if eds_raw is not None:
        builder.write_maps(EDS, dict(zip(elements, blurred)))
        builder.write_maps(EDS_RAW, dict(zip(elements, eds_raw)))
    if haadf is not None:
        builder.write_haadf(haadf)
    if TRUTH in scan.file:
        truth = {name: crop_maps(scan.file[TRUTH][name][()], box) for name in scan.file[TRUTH]}
        builder.write_maps(TRUTH, truth)
    if "simulation" in scan.file:
        _copy_cropped(scan.file["simulation"], builder.file, scan.scan_shape, box)


def _copy_cropped(group, out_file, scan_shape, crop) -> None:
    """Copy a group, cropping every dataset whose first two axes are the scan's."""
    r0, r1, c0, c1 = crop

    def visit(name, obj):
        import h5py

        if isinstance(obj, h5py.Dataset):
            data = obj[()]
            if data.ndim >= 2 and data.shape[:2] == tuple(scan_shape):
                data = data[r0:r1, c0:c1]
            ds = out_file.create_dataset(f"{group.name}/{name}", data=data)
            for key, value in obj.attrs.items():
                ds.attrs[key] = value

    out_group = out_file.require_group(group.name)
    for key, value in group.attrs.items():
        out_group.attrs[key] = value
    group.visititems(visit)


def write_calibration(builder, found, settings: PreprocessSettings) -> None:
    """Measured and fitted origins, their fit, probe and beam radius, scale and bin factor.

    Parameters
    ----------
    builder : BundleBuilder
    found : OriginMeasurement
        ``measured`` and fitted origins, shape (Rx', Ry', 2), and the probe radius.
    settings : PreprocessSettings
        Resolved (``beam_radius`` and ``scale`` set).
    """
    fit = found.fit
    sampled = "every position" if fit.sampled is None else \
        f"sub-grid of {int(fit.sampled.sum())} positions (origin_sample)"
    builder.write_array(f"{CALIBRATION}/origin", found.measured.astype(np.float32),
                        axes="Rx,Ry,(row,col)", unit="px of the input detector",
                        description="measured unscattered-beam origin, NaN where none "
                                    "was found or the position was not measured",
                        measured_at=sampled)
    builder.write_array(f"{CALIBRATION}/origin_fit", fit.fitted.astype(np.float32),
                        axes="Rx,Ry,(row,col)", unit="px of the input detector",
                        method=fit.method, coefficients=fit.coefficients,
                        rms_residual_px=fit.rms_residual, n_outliers=fit.n_outliers)
    builder.write_array(f"{CALIBRATION}/origin_inliers", fit.inliers)
    grp = builder.file[CALIBRATION]
    grp.attrs["probe_radius_px"] = float(found.probe_radius)
    grp.attrs["beam_radius_px"] = float(settings.beam_radius)
    grp.attrs["scale"] = float(settings.scale)
    grp.attrs["bin_factor"] = int(settings.bin_factor)
