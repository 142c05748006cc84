"""``stem2eds train``: train a model on raw scan bundles."""

from __future__ import annotations


def register(subparsers) -> None:
    from . import add_command

    p = add_command(
        subparsers, "train", help="train a model on scan bundles",
        description="""
            Train a model that predicts EDS atomic fractions (and optionally HAADF)
            from diffraction patterns. Takes RAW bundles (from convert or simulate),
            preprocesses them into RUN_DIR/preprocessed with the settings of --config
            (the intensity scale is fitted on the first bundle and stored), splits the
            probe positions 80:20 into training and validation, trains with Adam and
            an MAE loss until the validation loss stops improving, and writes RUN_DIR:
            weights.safetensors, run.json, config.toml, split.npz, checkpoints/
            (last.ckpt), logs/ (metrics.csv, TensorBoard) and
            figures/training_curves.png.

            Models: radial (default; ring statistics of the centred pattern, a linear
            head and a small MLP correction, fast on a CPU), paper (the paper's 2D CNN),
            ridge (radial profile + ridge regression baseline). Flags override the
            values of --config.
            """,
        example="""
            stem2eds train scan_0033.h5 --out runs/0033 --targets eds,haadf --split blocks
            stem2eds train scan_0033.h5 --out runs/0033 --resume
            stem2eds train a.h5 b.h5 --out runs/ab --device cuda --strategy ddp --devices 4
            """)
    from ..preprocess import PreprocessSettings
    from ..train.config import TrainConfig
    from .options import Option, add_settings_options

    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="raw scan bundles (.h5)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    p.add_argument("--config", metavar="FILE.toml", help="training settings (TOML)")
    add_settings_options(p, TrainConfig, [
        "model", Option("max_epochs", "--epochs"), "patience", "targets",
        Option("learning_rate", "--lr"), "batch_size", "loss", "split", "val_fraction",
        "seed"])
    add_settings_options(p, PreprocessSettings, [
        Option("bin_factor", "--bin"), "scaling", Option("crop", metavar="R0:R1,C0:C1")])
    add_settings_options(p, TrainConfig, [
        "filter_predictions", "device", "strategy", "devices", "num_nodes",
        Option("num_workers", "--workers"), "threads"])
    p.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR from checkpoints/last.ckpt after a crash or kill")
    # train()'s own arguments, named in its errors, and the flags that set them
    p.set_defaults(func=run, setting_flags={**p.get_default("setting_flags"),
                                            "resume": "--resume", "run_dir": "--out"})


def run(args) -> int:
    from ..preprocess import PreprocessSettings, parse_crop
    from ..train.config import TrainConfig
    from ..train.fit import is_main_process, train
    from .options import given

    config = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    pre = given(args, PreprocessSettings)
    if "crop" in pre:
        pre["crop"] = parse_crop(pre["crop"])
    config = config.replace(**given(args, TrainConfig), preprocess=pre or None)
    try:
        run_dir = train(args.bundles, args.out, config, resume=args.resume, quiet=args.quiet)
    except KeyboardInterrupt as exc:
        import sys

        from ..formats.rundir import RunDir
        from . import _Terminated

        # The run folder keeps its checkpoint; interrupted before the first
        # one, nothing is kept (train removes what it had made).
        text = "interrupted; resume with --resume" if RunDir(args.out).has_checkpoint() \
            else "interrupted before the first checkpoint; nothing was kept, run it again"
        print(f"stem2eds train: {text}", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    if is_main_process():  # DDP re-runs this command in its extra processes
        print(run_dir)
    return 0
