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
            scan_name, model, run_dir, stem2eds_version.
            """,
        example="""
            stem2eds predict runs/0033 scan_0034.h5 --out pred_0034.h5
            """)
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by stem2eds train")
    p.add_argument("bundle", metavar="BUNDLE", help="raw scan bundle to predict")
    p.add_argument("--out", required=True, metavar="PRED.h5", help="prediction file to write")
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
    # Library errors name settings; these are the flags (or command) that set them here.
    p.set_defaults(func=run, setting_flags={"device": "--device", "batch": "--batch",
                                            "scheduler": "--scheduler",
                                            "resume": "'stem2eds train --resume'"})


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
    with _warnings_on_stderr():
        out = predict_bundle(args.run_dir, args.bundle, args.out, batch=args.batch,
                             device=args.device, scheduler=args.scheduler,
                             transfer=args.transfer)
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
