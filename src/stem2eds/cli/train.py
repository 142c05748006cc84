"""``stem2eds train``: train a model on raw scan bundles."""

from __future__ import annotations

from ..errors import InputError


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

            Models: radial (default; ring statistics + 1D CNN, fast on a CPU), paper
            (the paper's 2D CNN), ridge (radial profile + linear regression baseline).
            Flags override the values of --config.
            """,
        example="""
            stem2eds train scan_0033.h5 --out runs/0033 --targets eds,haadf --split blocks
            stem2eds train scan_0033.h5 --out runs/0033 --resume
            stem2eds train a.h5 b.h5 --out runs/ab --device cuda --strategy ddp --devices 4
            """)
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="raw scan bundles (.h5)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    p.add_argument("--config", metavar="FILE.toml", help="training settings (TOML)")
    p.add_argument("--model", help="model name: radial, paper or ridge (default: radial)")
    p.add_argument("--epochs", type=int, help="maximum number of epochs (default 200)")
    p.add_argument("--patience", type=int,
                   help="epochs without validation improvement before stopping (default 10)")
    p.add_argument("--targets", help="eds or eds,haadf (default eds)")
    p.add_argument("--lr", type=float, dest="learning_rate", help="Adam learning rate (1e-4)")
    p.add_argument("--batch-size", type=int, help="mini-batch size (64)")
    p.add_argument("--loss", choices=("mae", "mse", "huber"), help="loss (mae)")
    p.add_argument("--split", choices=("random", "blocks"),
                   help="validation positions: random, or spatial blocks so neighbours "
                        "do not leak (random)")
    p.add_argument("--val-fraction", type=float, help="validation fraction (0.2)")
    p.add_argument("--seed", type=int, help="seed of split, weights and shuffling (0)")
    p.add_argument("--bin", type=int, dest="bin_factor",
                   help="detector binning of preprocessing (4)")
    p.add_argument("--scaling", choices=("none", "sqrt", "log"),
                   help="intensity scaling of preprocessing (none)")
    p.add_argument("--crop", metavar="R0:R1,C0:C1", help="scan region kept (preprocessing)")
    p.add_argument("--filter-predictions", choices=("auto", "on", "off"),
                   help="filter predicted EDS maps like the EDS targets (auto: on for radial, "
                        "off for paper and ridge)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="accelerator (auto)")
    p.add_argument("--strategy", help="Lightning strategy, e.g. ddp (auto)")
    p.add_argument("--devices", help="devices per node, or auto")
    p.add_argument("--num-nodes", type=int, help="nodes for multi-node DDP (1)")
    p.add_argument("--workers", type=int, dest="num_workers", help="DataLoader workers (0)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (0 = half the cores, up to 8)")
    p.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR from checkpoints/last.ckpt after a crash or kill")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.config import TrainConfig
    from ..train.fit import is_main_process, train

    config = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    pre = {}
    if args.bin_factor is not None:
        pre["bin_factor"] = args.bin_factor
    if args.scaling is not None:
        pre["scaling"] = args.scaling
    if args.crop is not None:
        from ..preprocess import parse_crop
        pre["crop"] = parse_crop(args.crop)
    for name in ("epochs", "patience", "batch_size", "val_fraction", "num_nodes",
                 "num_workers", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("num_workers", "threads") else
                                          1 if name != "val_fraction" else 0):
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    config = config.replace(
        model=args.model, max_epochs=args.epochs, patience=args.patience,
        targets=args.targets, learning_rate=args.learning_rate, batch_size=args.batch_size,
        loss=args.loss, split=args.split, val_fraction=args.val_fraction, seed=args.seed,
        device=args.device, strategy=args.strategy, devices=args.devices,
        num_nodes=args.num_nodes, num_workers=args.num_workers, threads=args.threads,
        filter_predictions=args.filter_predictions, preprocess=pre or None)
    run_dir = train(args.bundles, args.out, config, resume=args.resume, quiet=args.quiet)
    if is_main_process():  # DDP re-runs this command in its extra processes
        print(run_dir)
    return 0
