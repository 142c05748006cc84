"""``stem2eds predict``: predict EDS maps (and HAADF) of a scan with a trained run."""

from __future__ import annotations


def register(subparsers) -> None:
    from . import add_command

    p = add_command(
        subparsers, "predict", help="predict EDS maps of a scan with a trained run",
        description="""
            Predict the EDS atomic-fraction map of every element (and HAADF, when the
            run was trained on it) for a raw scan bundle. The scan is preprocessed on
            the fly with the run's stored settings and streamed through the model in
            batches, so scans larger than memory work. Writes PRED.h5 with eds/<El>
            (Rx', Ry') float32 atomic fractions, haadf, and attributes elements,
            scan_name, model, run_dir, stem2eds_version, scan_step_nm. Other formats:
            hspy/zspy (HyperSpy: a stack of the element maps with x/y axes in nm),
            tiff (an ImageJ hyperstack, one channel per map, calibrated in nm for
            Fiji) and csv (one row per position: x_nm, y_nm, one column per map).
            """,
        example="""
            stem2eds predict runs/0033 scan_0034.h5 --out pred_0034.h5
            stem2eds predict runs/0033 scan_0034.h5 --format tiff --out pred_0034.tif
            """)
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by stem2eds train")
    p.add_argument("bundle", metavar="BUNDLE", help="raw scan bundle to predict")
    p.add_argument("--out", required=True, metavar="PRED.h5", help="prediction file to write")
    p.add_argument("--format", default="hdf5", choices=("hdf5", "hspy", "zspy", "tiff", "csv"),
                   help="output format (hdf5: the prediction file; the others end in "
                        ".hspy, .zspy, .tif, .csv)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing hspy/zspy/tiff/csv output (hdf5 outputs are "
                        "always replaced)")
    p.add_argument("--batch", type=int, default=1024, help="patterns per batch")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where the model runs")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="preprocess on a Dask cluster: 'local' (one worker process per "
                        "core) or a scheduler address such as tcp://host:8786")
    p.add_argument("--no-transfer", dest="transfer", action="store_false",
                   help="predict the patterns as recorded even when the scan's detector setup "
                        "(camera length, binning) differs from the run's; by default they "
                        "are resampled onto the run's q grid")
    _add_engine(p)
    # Library errors name settings; these are the flags (or command) that set them here.
    p.set_defaults(func=run, setting_flags={"device": "--device", "batch": "--batch",
                                            "resume": "'stem2eds train --resume'",
                                            "format": "--format", "overwrite": "--overwrite",
                                            "out": "--out",
                                            "input_type": "--input-type",
                                            "scan_shape": "--scan-shape",
                                            "scheduler": "--scheduler",
                                            "transfer": "--no-transfer"})


def _add_engine(p) -> None:
    """``--engine libertem``: BUNDLE may be any file LiberTEM reads (stem2eds.libertem)."""
    p.add_argument("--engine", choices=("stem2eds", "libertem"), default="stem2eds",
                   help="stem2eds: BUNDLE is a raw scan bundle; libertem: BUNDLE is any "
                        "file LiberTEM reads (mib, k2is, frms6, blo, dm, empad, mrc, hdf5, "
                        "npy, ...), predicted with its UDF (inline, or on --scheduler)")
    p.add_argument("--input-type", default="auto", metavar="TYPE",
                   help="with --engine libertem: LiberTEM file type (auto detects it)")
    p.add_argument("--scan-shape", default=None, metavar="RXxRY",
                   help="with --engine libertem: scan shape when the file does not say")


def run(args) -> int:
    import os

    # Torch's OpenMP threads spin-wait between the model's parallel regions
    # by default, taking CPU from the preprocessing threads that run beside
    # them; passive waiting saved about 1 CPU-s of 10 on 12,000 patterns.
    # Read when torch loads, so set here, before predict imports it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..errors import InputError
    from ..predict.bundle import predict_bundle

    if args.batch < 1:
        raise InputError(f"--batch must be positive, got {args.batch}")
    if args.engine == "libertem":
        from . import parse_pair
        from ..libertem.engine import predict_file

        if args.format != "hdf5":
            raise InputError("--format applies to --engine stem2eds; with --engine libertem "
                             "the output is the prediction file (hdf5)",
                             hint="export it afterwards: stem2eds.predict.Prediction.load(PRED)"
                                  ".export(...)")
        shape = parse_pair(args.scan_shape) if args.scan_shape else None
        with _warnings_on_stderr():
            out = predict_file(args.run_dir, args.bundle, args.out, input_type=args.input_type,
                               scan_shape=shape, scheduler=args.scheduler, device=args.device)
        print(out)
        return 0
    if args.format != "hdf5":
        from ..predict.tofile import predict_to_file

        for path in predict_to_file(args.run_dir, args.bundle, args.out, args.format,
                                    batch=args.batch, device=args.device,
                                    scheduler=args.scheduler, overwrite=args.overwrite,
                                    transfer=args.transfer):
            print(path)
        return 0
    with _warnings_on_stderr():
        out = predict_bundle(args.run_dir, args.bundle, args.out, batch=args.batch,
                             device=args.device, scheduler=args.scheduler, quiet=args.quiet,
                             transfer=args.transfer, fork=args.own_process)
    print(out)
    return 0


def _warnings_on_stderr():
    """Prediction's warnings (a scan outside the training distribution) as one line each."""
    import contextlib
    import logging
    import sys

    @contextlib.contextmanager
    def routed():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("stem2eds predict: warning: %(message)s"))
        logger = logging.getLogger("stem2eds.predict")
        logger.addHandler(handler)
        propagate, logger.propagate = logger.propagate, False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate

    return routed()
