"""Catalogue of bad inputs across every command.

Each named case breaks one thing a microscopist could hand the tool (a
truncated file, a mislabelled map, a run folder from elsewhere, a full
disk) and asserts what the user sees: exit status 2, exactly one line on
stderr that names the file or flag, says what is wrong and how to fix it, no
traceback, and no output file (finished or partial) left behind.
"""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
from PIL import Image

from builders import make_raw_scan, small_config

RX, RY, Q = 4, 3, 16
ELEMENTS = ("Ge", "Sb", "Te")


@dataclass
class Case:
    """A bad input: how to make it, and what the one error line must say.

    ``build(ctx)`` makes the input in ``ctx.tmp`` and returns the command's
    arguments; ``expect`` are fragments the error line must hold (the file
    or flag, the problem, the fix); ``outputs`` (relative to ``ctx.out``)
    must not exist afterwards.
    """

    command: str
    build: Callable[["Context"], list]
    expect: tuple[str, ...]
    outputs: tuple[str, ...] = ("result.h5",)
    patch: Callable | None = None


@dataclass
class Context:
    tmp: Path
    out: Path
    raw: Path
    run: Path
    monkeypatch: pytest.MonkeyPatch
    extra: dict = field(default_factory=dict)


# -- valid inputs that each case breaks in one way -------------------------------

def _frames(seed: int = 0) -> np.ndarray:
    """(RX*RY, Q, Q) uint16 patterns: a stack as Velox exports it."""
    return np.random.default_rng(seed).integers(0, 500, (RX * RY, Q, Q)).astype(np.uint16)


def _maps_folder(folder: Path, values: dict[str, np.ndarray] | None = None,
                 ext: str = ".npy") -> Path:
    """A folder of per-element maps (fractions summing to 1 at every position)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    comp = rng.dirichlet(np.ones(len(ELEMENTS)), size=(RX, RY)).transpose(2, 0, 1)
    values = values or dict(zip(ELEMENTS, comp))
    for name, arr in values.items():
        path = folder / f"{name}{ext}"
        if ext == ".npy":
            np.save(path, arr)
        elif ext == ".tif":
            tifffile.imwrite(path, np.asarray(arr, np.float32))
        elif ext == ".csv":
            np.savetxt(path, arr, delimiter=",")
    return folder


def _npy_source(ctx: Context) -> Path:
    path = ctx.tmp / "scan.npy"
    np.save(path, _frames())
    return path


def _convert_args(ctx: Context, diffraction: Path | None = None, eds: Path | None = None,
                  *extra) -> list:
    diffraction = diffraction or _npy_source(ctx)
    eds = eds or _maps_folder(ctx.tmp / "maps")
    return ["convert", "--diffraction", diffraction, "--scan-shape", f"{RX}x{RY}",
            "--eds", eds, "--quiet", *extra, "--out", ctx.out / "result.h5"]


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def _garbage(path: Path, n: int = 3000) -> Path:
    path.write_bytes(np.random.default_rng(7).bytes(n))
    return path


# -- convert: files of every supported format, damaged ------------------------------

def truncated_mrc(ctx):
    path = ctx.tmp / "scan.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(_frames())
    return _convert_args(ctx, _truncate(path))


def truncated_npy(ctx):
    return _convert_args(ctx, _truncate(_npy_source(ctx)))


def garbage_npy(ctx):
    return _convert_args(ctx, _garbage(ctx.tmp / "scan.npy"))


def truncated_hdf5(ctx):
    path = ctx.tmp / "scan.h5"
    with h5py.File(path, "w") as f:
        f["data"] = _frames().reshape(RX, RY, Q, Q)
    return _convert_args(ctx, _truncate(path, 0.3))


def garbage_hdf5(ctx):
    return _convert_args(ctx, _garbage(ctx.tmp / "scan.h5"))


def garbage_tiff_map(ctx):
    maps = _maps_folder(ctx.tmp / "maps", ext=".tif")
    _garbage(maps / "Sb.tif", 500)
    return _convert_args(ctx, None, maps)


def truncated_png_map(ctx):
    maps = _maps_folder(ctx.tmp / "maps", ext=".tif")
    (maps / "Te.tif").unlink()
    Image.fromarray(np.full((RX, RY), 40, np.uint8)).save(maps / "Te.png")
    _truncate(maps / "Te.png", 0.6)
    return _convert_args(ctx, None, maps)


def text_csv_map(ctx):
    maps = _maps_folder(ctx.tmp / "maps", ext=".csv")
    (maps / "Ge.csv").write_text("Ge map exported by hand\n0.2,0.3,abc\n")
    return _convert_args(ctx, None, maps)


def frames_do_not_match_scan_shape(ctx):
    args = _convert_args(ctx)
    args[args.index("--scan-shape") + 1] = f"{RX}x{RY + 1}"
    return args


# -- convert: maps that are readable but wrong ----------------------------------

def _one_map_changed(ctx, element: str, change) -> list:
    rng = np.random.default_rng(3)
    comp = rng.dirichlet(np.ones(len(ELEMENTS)), size=(RX, RY)).transpose(2, 0, 1)
    values = dict(zip(ELEMENTS, comp))
    values[element] = change(values[element].copy())
    return _convert_args(ctx, None, _maps_folder(ctx.tmp / "maps", values))


def nan_in_map(ctx):
    return _one_map_changed(ctx, "Ge", lambda a: np.where(np.eye(RX, RY) > 0, np.nan, a))


def inf_in_csv_map(ctx):
    maps = _maps_folder(ctx.tmp / "maps", ext=".csv")
    (maps / "Te.csv").write_text("0.1,0.2,inf\n0.1,0.2,0.3\n0.1,0.2,0.3\n0.1,0.2,0.3\n")
    return _convert_args(ctx, None, maps)


def negative_map_values(ctx):
    return _one_map_changed(ctx, "Sb", lambda a: a - 0.5)


def map_shape_differs_from_scan(ctx):
    values = {e: np.full((RX + 3, RY + 1), 1 / 3) for e in ELEMENTS}
    return _convert_args(ctx, None, _maps_folder(ctx.tmp / "maps", values))


def unknown_element(ctx):
    return _convert_args(ctx, None, None, "--elements", "Ge,Sb,Tx")


def percent_or_fraction_ambiguous(ctx):
    # Largest value 1.2: a fraction with noise above 1, or 1.2 at.% of a minor
    # element? Refused rather than guessed.
    values = {"Ge": np.full((RX, RY), 0.4), "Sb": np.full((RX, RY), 0.3),
              "Te": np.linspace(0.5, 1.2, RX * RY).reshape(RX, RY)}
    return _convert_args(ctx, None, _maps_folder(ctx.tmp / "maps", values))


def empty_eds_folder(ctx):
    empty = ctx.tmp / "maps_empty"
    empty.mkdir()
    return _convert_args(ctx, None, empty)


def _enospc_after_first_block(ctx):
    """The disk fills up after the first block of patterns is written.

    h5py reports a failed write as OSError; the errno is what the CLI keys on.
    """
    real = h5py.Dataset.__setitem__
    calls = {"n": 0}

    def write_then_fill(self, key, value):
        if self.name == "/diffraction":
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(errno.ENOSPC, "No space left on device", self.file.filename)
        return real(self, key, value)

    ctx.monkeypatch.setattr(h5py.Dataset, "__setitem__", write_then_fill)


def disk_fills_during_convert(ctx):
    # --block-mb small enough that the scan is copied in several blocks.
    return _convert_args(ctx, None, None, "--block-mb", "0.001")


# -- simulate ---------------------------------------------------------------------

def simulate_empty_scan_shape(ctx):
    return ["simulate", ctx.out / "sim", "--scans", "2", "--scan-shape", "0x5",
            "--detector", "32", "--quiet"]


def simulate_into_a_file(ctx):
    target = ctx.out / "sim"
    target.write_text("not a folder")
    ctx.extra["keep"] = target
    return ["simulate", target, "--scans", "2", "--scan-shape", "4x3", "--detector", "32",
            "--quiet"]


# -- bundles given to preprocess, train, predict ----------------------------------

def _copy_raw(ctx, name="bundle.h5") -> Path:
    path = ctx.tmp / name
    shutil.copy(ctx.raw, path)
    return path


def bundle_missing_diffraction(ctx):
    path = _copy_raw(ctx)
    with h5py.File(path, "a") as f:
        del f["diffraction"]
    return ["preprocess", path, "--out", ctx.out / "result.h5", "--quiet"]


def hdf5_that_is_not_a_bundle(ctx):
    path = ctx.tmp / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros((RX, RY, Q, Q))
    return ["preprocess", path, "--out", ctx.out / "result.h5", "--quiet"]


def bundle_from_newer_version(ctx):
    path = _copy_raw(ctx)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    return ["preprocess", path, "--out", ctx.out / "result.h5", "--quiet"]


def truncated_bundle(ctx):
    return ["preprocess", _truncate(_copy_raw(ctx), 0.6), "--out", ctx.out / "result.h5",
            "--quiet"]


def crop_outside_scan(ctx):
    return ["preprocess", ctx.raw, "--crop", "0:50,0:4", "--out", ctx.out / "result.h5",
            "--quiet"]


def train_bundle_without_eds(ctx):
    path = _copy_raw(ctx)
    with h5py.File(path, "a") as f:
        del f["eds"]
    return ["train", path, "--out", ctx.out / "run", "--epochs", "1", "--quiet"]


def train_garbage_config(ctx):
    config = ctx.tmp / "settings.toml"
    config.write_text("[train\nmax_epochs = = 3\n")
    return ["train", ctx.raw, "--config", config, "--out", ctx.out / "run", "--quiet"]


def train_resume_without_checkpoint(ctx):
    return ["train", ctx.raw, "--out", ctx.out / "run", "--resume", "--quiet"]


# -- run folders given to predict ---------------------------------------------------

def _copy_run(ctx) -> Path:
    target = ctx.tmp / "shared_run"
    shutil.copytree(ctx.run, target, ignore=shutil.ignore_patterns("logs", "preprocessed"))
    return target


def run_from_incompatible_version(ctx):
    run = _copy_run(ctx)
    info = json.loads((run / "run.json").read_text())
    info["format_version"] = 99
    (run / "run.json").write_text(json.dumps(info))
    return ["predict", run, ctx.raw, "--out", ctx.out / "result.h5"]


def run_missing_weights(ctx):
    run = _copy_run(ctx)
    (run / "weights.safetensors").unlink()
    return ["predict", run, ctx.raw, "--out", ctx.out / "result.h5"]


def empty_run_folder(ctx):
    empty = ctx.tmp / "empty_run"
    empty.mkdir()
    return ["predict", empty, ctx.raw, "--out", ctx.out / "result.h5"]


def predict_truncated_bundle(ctx):
    return ["predict", ctx.run, _truncate(_copy_raw(ctx), 0.6), "--out",
            ctx.out / "result.h5"]


def _enospc_writing_prediction(ctx):
    real = h5py.Group.create_dataset

    def full_disk(self, name, *args, **kwargs):
        if name == "haadf" or "/" in name or self.name == "/eds":
            raise OSError(errno.ENOSPC, "No space left on device", self.file.filename)
        return real(self, name, *args, **kwargs)

    ctx.monkeypatch.setattr(h5py.Group, "create_dataset", full_disk)


def disk_fills_during_predict(ctx):
    return ["predict", ctx.run, ctx.raw, "--out", ctx.out / "result.h5"]


# -- experiment and report --------------------------------------------------------------

def experiment_on_empty_folder(ctx):
    empty = ctx.tmp / "scans"
    empty.mkdir()
    return ["experiment", "--strategy", "random", "--out", ctx.out / "exp", empty, "--quiet"]


def experiment_too_few_scans(ctx):
    return ["experiment", "--strategy", "interpolate", "--out", ctx.out / "exp", ctx.raw,
            "--quiet"]


def report_on_empty_folder(ctx):
    empty = ctx.out / "exp"
    empty.mkdir()
    ctx.extra["keep"] = empty
    return ["report", empty]


def report_with_corrupt_metrics(ctx):
    run = ctx.out / "exp"
    run.mkdir()
    (run / "metrics.json").write_text('{"strategy": "random", "scans": {')
    ctx.extra["keep"] = run
    return ["report", run]


CASES = {
    # convert: damaged files of each format
    "truncated MRC": Case("convert", truncated_mrc, ("scan.mrc", "truncated")),
    "truncated npy": Case("convert", truncated_npy, ("scan.npy",)),
    "garbage npy": Case("convert", garbage_npy, ("scan.npy",)),
    "truncated HDF5": Case("convert", truncated_hdf5, ("scan.h5",)),
    "garbage HDF5": Case("convert", garbage_hdf5, ("scan.h5",)),
    "garbage TIFF map": Case("convert", garbage_tiff_map, ("Sb.tif", "cannot read")),
    "truncated PNG map": Case("convert", truncated_png_map, ("Te.png", "cannot read")),
    "text in a CSV map": Case("convert", text_csv_map, ("Ge.csv", "not a table of numbers")),
    # convert: wrong shapes and values
    "frames do not match --scan-shape": Case(
        "convert", frames_do_not_match_scan_shape, ("scan.npy", "--scan-shape", "frames")),
    "NaN in a map": Case("convert", nan_in_map, ("Ge.npy", "NaN", "fill or mask")),
    "inf in a CSV map": Case("convert", inf_in_csv_map, ("Te.csv", "infinite",
                                                          "fill or mask")),
    "negative map values": Case("convert", negative_map_values,
                                ("maps", "Sb", "negative", "atomic fractions or percent")),
    "map shape differs from scan": Case("convert", map_shape_differs_from_scan,
                                        ("maps", "7x4", "4x3", "--register")),
    "unknown element": Case("convert", unknown_element, ("'Tx'", "chemical symbols")),
    "percent or fraction ambiguous": Case(
        "convert", percent_or_fraction_ambiguous, ("maps", "ambiguous", "1.2",
                                                   "--eds-unit")),
    "empty EDS folder": Case("convert", empty_eds_folder, ("maps_empty", "no element maps",
                                                           "Ge.tif")),
    "disk fills during convert": Case("convert", disk_fills_during_convert,
                                      ("no space left", "--out"),
                                      patch=_enospc_after_first_block),
    # simulate
    "simulate empty scan shape": Case("simulate", simulate_empty_scan_shape,
                                      ("--scan-shape", "positive"), outputs=("sim",)),
    "simulate into a file": Case("simulate", simulate_into_a_file, ("sim", "not a folder"),
                                 outputs=()),
    # preprocess
    "bundle missing diffraction": Case("preprocess", bundle_missing_diffraction,
                                       ("bundle.h5", "'diffraction'")),
    "HDF5 that is not a bundle": Case("preprocess", hdf5_that_is_not_a_bundle,
                                      ("other.h5", "not a stem2eds scan bundle",
                                       "stem2eds convert")),
    "bundle from a newer version": Case("preprocess", bundle_from_newer_version,
                                        ("bundle.h5", "version 99", "upgrade")),
    "truncated bundle": Case("preprocess", truncated_bundle, ("bundle.h5", "HDF5")),
    "crop outside the scan": Case("preprocess", crop_outside_scan, ("crop", "12x10")),
    # train
    "train on a bundle without EDS": Case("train", train_bundle_without_eds,
                                          ("bundle.h5", "eds"), outputs=("run",)),
    "train with a broken TOML config": Case("train", train_garbage_config,
                                            ("settings.toml", "TOML"), outputs=("run",)),
    "resume with no checkpoint": Case("train", train_resume_without_checkpoint,
                                      ("run", "last.ckpt", "without --resume"),
                                      outputs=("run",)),
    # predict
    "run from an incompatible version": Case("predict", run_from_incompatible_version,
                                             ("shared_run", "version 99", "retrain")),
    "run missing weights": Case("predict", run_missing_weights,
                                ("shared_run", "weights.safetensors")),
    "empty run folder": Case("predict", empty_run_folder, ("empty_run", "run.json")),
    "predict a truncated bundle": Case("predict", predict_truncated_bundle,
                                       ("bundle.h5", "HDF5")),
    "disk fills during predict": Case("predict", disk_fills_during_predict,
                                      ("no space left", "--out"),
                                      patch=_enospc_writing_prediction),
    # experiment, report
    "experiment on an empty folder": Case("experiment", experiment_on_empty_folder,
                                          ("scans", "folder", "*.h5"), outputs=("exp",)),
    "experiment with too few scans": Case("experiment", experiment_too_few_scans,
                                          ("interpolate", "3 bundles", "series order"),
                                          outputs=("exp",)),
    "report on an empty folder": Case("report", report_on_empty_folder, ("exp", "metrics.json"),
                                      outputs=("exp/report.html",)),
    "report with corrupt metrics": Case("report", report_with_corrupt_metrics,
                                        ("metrics.json", "JSON"),
                                        outputs=("exp/report.html",)),
}


@pytest.fixture(scope="module")
def shared_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(small raw bundle, finished one-epoch run trained on it)."""
    from stem2eds.train.fit import train

    folder = tmp_path_factory.mktemp("catalogue")
    raw = make_raw_scan(folder / "raw.h5", seed=2)
    run = train([raw], folder / "run", small_config(max_epochs=1), quiet=True)
    return raw, Path(run)


def _leftovers(folder: Path, keep: Path | None) -> list[Path]:
    """Files and folders under ``folder``, except what the case made itself (``keep``)."""
    return [p for p in folder.rglob("*")
            if keep is None or not (p == keep or keep in p.parents)]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_no_output(name, tmp_path, shared_inputs, run_cli,
                                                    monkeypatch):
    case = CASES[name]
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    ctx = Context(tmp_path / "in", tmp_path / "out", *shared_inputs, monkeypatch)
    args = case.build(ctx)
    if case.patch is not None:
        case.patch(ctx)
    code, stdout, stderr = run_cli(*args)
    assert code == 2, (name, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"stem2eds {case.command}: error: "), lines[0]
    assert "Traceback" not in stderr and "internal error" not in stderr
    for fragment in case.expect:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    for rel in case.outputs:
        assert not (ctx.out / rel).exists(), f"{rel} left behind: {lines[0]}"
    assert _leftovers(ctx.out, ctx.extra.get("keep")) == [], lines[0]


def test_catalogue_has_at_least_20_cases_over_every_command():
    assert len(CASES) >= 20
    commands = {case.command for case in CASES.values()}
    assert commands >= {"convert", "simulate", "preprocess", "train", "predict",
                        "experiment", "report"}


def test_valid_convert_inputs_of_the_catalogue_convert(tmp_path, run_cli, monkeypatch):
    """The base inputs are valid, so each case fails for its own reason."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    ctx = Context(tmp_path / "in", tmp_path / "out", Path(), Path(), monkeypatch)
    code, _, err = run_cli(*_convert_args(ctx, None, None, "--block-mb", "0.001"))
    assert code == 0, err
    assert (ctx.out / "result.h5").is_file()


@pytest.mark.parametrize("unit, top, expect_percent", [
    ("auto", 1.0, False), ("auto", 1.6, True), ("auto", 37.0, True),
    ("fraction", 1.2, False), ("percent", 1.2, True),
])
def test_percent_rule(unit, top, expect_percent):
    """<= 1: fraction; > 1.5: percent; in between only with an explicit unit."""
    from stem2eds.io import to_fractions

    maps = {"Ge": np.linspace(0, top, 12).reshape(4, 3), "Te": np.full((4, 3), 0.5)}
    fractions, was_percent = to_fractions(maps, unit=unit)
    assert was_percent is expect_percent
    scale = 100.0 if expect_percent else 1.0
    np.testing.assert_allclose(fractions["Ge"], np.clip(maps["Ge"] / scale, 0, 1), rtol=1e-6)
    assert all(0 <= f.min() and f.max() <= 1 for f in fractions.values())


def test_fraction_unit_refuses_percent_sized_values():
    from stem2eds.errors import InputError
    from stem2eds.io import to_fractions

    with pytest.raises(InputError, match="`eds_unit` percent"):
        to_fractions({"Ge": np.full((2, 2), 30.0)}, unit="fraction")
