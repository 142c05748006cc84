"""``stem2eds preprocess``: raw bundle -> preprocessed bundle."""

from __future__ import annotations

from . import add_command

#: Settings whose flag is not the setting's name with dashes.
FLAGS = {"bin_factor": "--bin"}


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
    from ..preprocess import PreprocessSettings
    from .options import Option, add_settings_options

    add_settings_options(p, PreprocessSettings, [
        Option("bin_factor", "--bin"), "scaling", Option("beam_radius", metavar="PX"),
        "origin_fit", Option("origin_sample", metavar="N"),
        Option("crop", metavar="r0:r1,c0:c1"), "eds_filter", Option("eds_kernel", metavar="K"),
        Option("eds_sigma", metavar="PX")])
    group = p.add_mutually_exclusive_group()
    add_settings_options(group, PreprocessSettings, ["scale"])
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
    p.set_defaults(func=run, setting_flags={**FLAGS, **p.get_default("setting_flags")})


def run(args) -> int:
    from dataclasses import asdict

    from ..errors import InputError
    from ..preprocess import (PreprocessSettings, load_settings, parse_crop, preprocess_bundle,
                              summarise)
    from .options import given

    base = load_settings(args.settings) if args.settings else PreprocessSettings()
    values = asdict(base)
    if args.settings:
        # measured on the training scan; this scan's probe and detector are measured anew
        values["probe_radius"] = None
    overrides = given(args, PreprocessSettings)
    if "crop" in overrides:
        overrides["crop"] = parse_crop(overrides["crop"])
    values.update(overrides)
    settings = PreprocessSettings.from_dict(values)
    if args.batch < 1:
        raise InputError(f"`batch` must be positive, got {args.batch}")
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
