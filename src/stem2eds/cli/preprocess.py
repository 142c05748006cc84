"""``stem2eds preprocess``: raw bundle -> preprocessed bundle."""

from __future__ import annotations

import re

from . import add_command

#: Settings whose flag is not the setting's name with dashes.
FLAGS = {"bin_factor": "--bin"}


def with_flags(exc, flags: dict[str, str]):
    """The library error ``exc`` with its `setting` names written as this command's flags.

    Library errors name settings in backquotes (``\`beam_radius\```); on the
    command line the user sees the flag (``--beam-radius``): ``flags`` for
    the exceptions, the name with dashes otherwise.
    """
    from ..errors import InputError

    def swap(text):
        if text is None:
            return None
        return re.sub(r"`([a-z][a-z0-9_]*)`",
                      lambda m: flags.get(m[1], "--" + m[1].replace("_", "-")), text)

    return InputError(swap(exc.message), path=exc.path, hint=swap(exc.hint))


def register(subparsers) -> None:
    p = add_command(
        subparsers, "preprocess",
        help="centre, clean, bin and scale patterns; blur EDS targets",
        description="""
            Preprocess a raw scan bundle as the paper did: find the unscattered-beam
            origin of every pattern (sub-pixel) and fit it against scan position,
            centre the patterns on it, zero the central beam, bin the detector,
            optionally take sqrt/log, scale to [0, 1]; crop a scan region; blur the
            EDS maps (targets; raw maps kept). Streams the scan, so it never needs
            the whole 4D array in memory. Prints the origin drift, probe radius and
            scale found. Use --settings with the training bundle (or its JSON) so
            new scans get the training scale.""",
        example="""
            stem2eds preprocess scan_0033.h5 --out pre_0033.h5 --bin 4 --crop 0:70,0:45
            stem2eds preprocess scan_0034.h5 --out pre_0034.h5 --settings pre_0033.h5""")
    p.add_argument("bundle", help="raw scan bundle (.h5)")
    p.add_argument("--out", required=True, help="preprocessed bundle to write (.h5)")
    p.add_argument("--bin", type=int, default=None, dest="bin_factor",
                   help="detector bin factor (default 4: 256 -> 64)")
    p.add_argument("--scaling", choices=("none", "sqrt", "log"), default=None,
                   help="intensity scaling before normalisation (default none)")
    p.add_argument("--beam-radius", type=float, default=None, metavar="PX",
                   help="radius of the zeroed central beam in input detector px "
                        "(default: measured probe radius x 1.25)")
    p.add_argument("--origin-fit", choices=("plane", "poly2", "none"), default=None,
                   help="model of origin vs scan position (default plane)")
    p.add_argument("--origin-sample", type=int, default=None, metavar="N",
                   help="with a plane/poly2 origin fit, measure origins on a sub-grid of "
                        "about N positions spread over the scan (default 1024; 0: every "
                        "position)")
    p.add_argument("--crop", default=None, metavar="r0:r1,c0:c1",
                   help="keep only this scan region (0-based, end exclusive)")
    p.add_argument("--eds-filter", choices=("gaussian", "median", "none"), default=None,
                   help="denoising of the EDS targets (default gaussian, OpenCV 7x7)")
    p.add_argument("--eds-kernel", type=int, default=None, metavar="K",
                   help="odd filter window in scan px (default 7)")
    p.add_argument("--eds-sigma", type=float, default=None, metavar="PX",
                   help="Gaussian sigma in scan px (default: derived from the kernel)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--scale", type=float, default=None,
                       help="divisor mapping values to [0, 1] (default: fitted on this scan)")
    group.add_argument("--settings", default=None, metavar="FILE",
                       help="reuse settings (JSON, or a preprocessed bundle); options "
                            "given on the command line override them")
    p.add_argument("--register", action="store_true",
                   help="resample eds_unregistered/haadf_unregistered maps onto the scan "
                        "grid by aligning them to a virtual ADF image")
    p.add_argument("--batch", type=int, default=256, help="patterns per streamed block")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on a Dask cluster, blocks of scan rows per task: 'local' (one "
                        "worker process per core) or a scheduler address (tcp://host:8786)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError

    try:
        return _run(args)
    except InputError as exc:
        raise with_flags(exc, FLAGS) from None


def _run(args) -> int:
    from dataclasses import asdict

    from ..errors import InputError
    from ..preprocess import (PreprocessSettings, load_settings, parse_crop, preprocess_bundle,
                              summarise)

    base = load_settings(args.settings) if args.settings else PreprocessSettings()
    values = asdict(base)
    if args.settings:
        # measured on the training scan; this scan's probe and detector are measured anew
        values["probe_radius"] = None
    overrides = {"bin_factor": args.bin_factor, "scaling": args.scaling,
                 "beam_radius": args.beam_radius, "origin_fit": args.origin_fit,
                 "origin_sample": args.origin_sample,
                 "crop": parse_crop(args.crop), "eds_filter": args.eds_filter,
                 "eds_kernel": args.eds_kernel, "eds_sigma": args.eds_sigma, "scale": args.scale}
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = PreprocessSettings.from_dict(values)
    if args.batch < 1:
        raise InputError(f"--batch must be positive, got {args.batch}")
    preprocess_bundle(args.bundle, args.out, settings, quiet=args.quiet,
                      register=args.register, batch=args.batch, scheduler=args.scheduler)
    found = summarise(args.out)
    drift = found["origin_drift_px"]
    print(f"wrote {args.out}: scan {found['scan_shape'][0]}x{found['scan_shape'][1]}, "
          f"patterns {found['detector_shape'][0]}x{found['detector_shape'][1]}")
    print(f"origin drift (fitted, {found['origin_fit']}): {drift[0]:.2f} px rows, "
          f"{drift[1]:.2f} px columns; rms residual {found['origin_rms_residual_px']:.3f} px, "
          f"{found['origin_outliers']} outlier(s)")
    print(f"probe radius {found['probe_radius_px']:.2f} px, beam radius "
          f"{found['beam_radius_px']:.2f} px, scale {found['scale']:.6g}")
    if "registration" in found:
        reg = found["registration"]
        print(f"registration on {reg['reference']}: scan origin at map offset "
              f"({reg['offset'][0]:.2f}, {reg['offset'][1]:.2f}) scan px, pixel ratio "
              f"{reg['pixel_ratio']:.4g}, error {reg['error']:.3f}")
    return 0
