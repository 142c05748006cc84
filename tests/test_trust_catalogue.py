"""Trust at the boundary (issue 14): a catalogue of untrusted files and careless commands.

Every case runs one command in-process on inputs made in its own folder and
must exit 2 with one line naming the problem and leave that folder exactly
as it was (no output, no ``.partial``, no ``.lock``). The classes: names
from files that would become paths, HDF5 data in other files, outputs that
are inputs, absurd values in configs, run folders, bundles and metrics files,
and names that are not UTF-8.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from builders import make_raw_scan, small_config

# -- shared inputs -------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A good raw bundle and a finished (ridge: closed-form, fast) training run."""
    from stem2eds.train.fit import train

    root = tmp_path_factory.mktemp("trust")
    good = make_raw_scan(root / "good.h5", seed=3)
    run = train([good], root / "run", small_config(model="ridge"), quiet=True)
    return {"good": good, "run": Path(run)}


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _bundle(case: Path, shared, name: str = "scan.h5") -> Path:
    dst = case / name
    shutil.copy(shared["good"], dst)
    return dst


def _run_copy(case: Path, shared) -> Path:
    dst = case / "run"
    shutil.copytree(shared["run"], dst)
    return dst


def _edit_attrs(path: Path, **attrs) -> Path:
    with h5py.File(path, "r+") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
    return path


def _replace_dataset(path: Path, name: str, make) -> Path:
    with h5py.File(path, "r+") as f:
        shape, dtype = f[name].shape, f[name].dtype
        del f[name]
        make(f, name, shape, dtype)
    return path


def _external(case: Path, shared, name: str = "diffraction") -> Path:
    secret = case / "secret.bin"
    secret.write_bytes(b"secret " * 100000)

    def make(f, n, shape, dtype):
        nbytes = int(np.prod(shape)) * dtype.itemsize
        f.create_dataset(n, shape=shape, dtype=dtype, external=[(str(secret), 0, nbytes)])
    return _replace_dataset(_bundle(case, shared), name, make)


def _virtual(case: Path, shared, where: str) -> Path:
    """diffraction as a virtual dataset; its source ``outside`` the folder or ``missing``."""
    folder = case.parent / "elsewhere" if where == "outside" else case
    folder.mkdir(exist_ok=True)
    bundle = _bundle(case, shared)
    with h5py.File(bundle, "r") as f:
        data = f["diffraction"][()]
    src = folder / "patterns_src.h5"
    with h5py.File(src, "w") as g:
        g["data"] = data

    def make(f, n, shape, dtype):
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[...] = h5py.VirtualSource(str(src), "data", shape=shape)
        f.create_virtual_dataset(n, layout)
    _replace_dataset(bundle, "diffraction", make)
    if where == "missing":
        src.unlink()
    return bundle


def _huge(case: Path, shared, shape) -> Path:
    def make(f, n, _shape, dtype):
        f.create_dataset(n, shape=shape, dtype=dtype, chunks=(1, 1, min(shape[2], 32),
                                                                min(shape[3], 32)))
    return _replace_dataset(_bundle(case, shared), "diffraction", make)


def _strings(case: Path, shared) -> Path:
    def make(f, n, shape, dtype):
        f.create_dataset(n, data=np.full((2, 2, 2, 2), "x", dtype=object),
                         dtype=h5py.string_dtype())
    return _replace_dataset(_bundle(case, shared), "diffraction", make)


def _huge_map(case: Path, shared) -> Path:
    def make(f, n, shape, dtype):
        f.create_dataset(n, shape=(100000, 100000), dtype=np.float32, chunks=(64, 64))
    return _replace_dataset(_bundle(case, shared), "eds/Ge", make)


def _toml(case: Path, text: str) -> Path:
    path = case / "train.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _run_json(case: Path, shared, **fields) -> Path:
    run = _run_copy(case, shared)
    info = json.loads((run / "run.json").read_text())
    info.update(fields)
    (run / "run.json").write_text(json.dumps(info))
    return run


def _metrics(case: Path, doc) -> Path:
    folder = case / "exp"
    (folder / "figures").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(doc))
    return folder


_METRICS_OK = {"strategy": "random", "elements": ["Ge", "Sb"], "scans": ["a"], "summary": {},
               "figures": []}

_NON_UTF8 = os.fsdecode(b"out\xff\xfe")

#: Names from files that must never become paths.
BAD_NAMES = {"parent": "../../escaped", "absolute": "/tmp/escaped", "dotdot": "..",
             "hidden": ".hidden", "slash": "a/b", "backslash": "a\\b", "newline": "a\nb",
             "trailing-space": "a ",
             "long": "x" * 300, "empty": "", "dash": "-rf"}

# Each case: (make(case, shared) -> argv, fragment expected in the one line).
CASES: dict[str, tuple] = {}

for key, bad in BAD_NAMES.items():
    CASES[f"preprocess-scan_name-{key}"] = (
        lambda c, s, b=bad: ["preprocess", _edit_attrs(_bundle(c, s), scan_name=b),
                             "--out", c / "pre.h5"], "scan_name")
    CASES[f"predict-scan_name-{key}"] = (
        lambda c, s, b=bad: ["predict", _run_copy(c, s), _edit_attrs(_bundle(c, s),
                                                                      scan_name=b),
                             "--out", c / "pred.h5"], "scan_name")
    CASES[f"train-scan_name-{key}"] = (
        lambda c, s, b=bad: ["train", _edit_attrs(_bundle(c, s), scan_name=b),
                             "--out", c / "r", "--model", "ridge"], "scan_name")
    CASES[f"experiment-scan_name-{key}"] = (
        lambda c, s, b=bad: ["experiment", _edit_attrs(_bundle(c, s, "a.h5"), scan_name=b),
                             _bundle(c, s, "b.h5"), "--strategy", "leave-one-out",
                             "--out", c / "exp"], "scan_name")

for key, elements in {"unknown": ["Ge", "Xx", "Te"], "twice": ["Ge", "Ge", "Te"],
                      "path": ["Ge", "../Sb", "Te"]}.items():
    value = np.array(elements, dtype=h5py.string_dtype())
    CASES[f"preprocess-elements-{key}"] = (
        lambda c, s, v=value: ["preprocess", _edit_attrs(_bundle(c, s), elements=v),
                               "--out", c / "pre.h5"], "element")
    CASES[f"train-elements-{key}"] = (
        lambda c, s, v=value: ["train", _edit_attrs(_bundle(c, s), elements=v),
                               "--out", c / "r", "--model", "ridge"], "element")

for cmd in ("preprocess", "predict", "train", "experiment"):
    def argv(cmd, bundle, c, s):
        return {"preprocess": ["preprocess", bundle, "--out", c / "pre.h5"],
                "predict": ["predict", _run_copy(c, s), bundle, "--out", c / "pred.h5"],
                "train": ["train", bundle, "--out", c / "r", "--model", "ridge"],
                "experiment": ["experiment", bundle, _bundle(c, s, "b.h5"), "--strategy",
                               "leave-one-out", "--out", c / "exp"]}[cmd]
    CASES[f"{cmd}-external-storage"] = (
        lambda c, s, cmd=cmd: argv(cmd, _external(c, s), c, s), "h5repack")
    CASES[f"{cmd}-virtual-missing-source"] = (
        lambda c, s, cmd=cmd: argv(cmd, _virtual(c, s, "missing"), c, s), "missing")
    CASES[f"{cmd}-virtual-source-outside"] = (
        lambda c, s, cmd=cmd: argv(cmd, _virtual(c, s, "outside"), c, s), "outside")
    CASES[f"{cmd}-declares-1e5x1e5-positions"] = (
        lambda c, s, cmd=cmd: argv(cmd, _huge(c, s, (100000, 100000, 32, 32)), c, s),
        "100000x100000")
    CASES[f"{cmd}-4d-strings"] = (
        lambda c, s, cmd=cmd: argv(cmd, _strings(c, s), c, s), "not numbers")
CASES["preprocess-huge-detector"] = (
    lambda c, s: ["preprocess", _huge(c, s, (2, 2, 300000, 300000)), "--out", c / "pre.h5"],
    "memory")
CASES["preprocess-external-eds-map"] = (
    lambda c, s: ["preprocess", _external(c, s, "eds/Ge"), "--out", c / "pre.h5", "--quiet"],
    "h5repack")
CASES["preprocess-eds-map-1e5x1e5"] = (
    lambda c, s: ["preprocess", _huge_map(c, s), "--out", c / "pre.h5", "--quiet"], "eds/Ge")


# -- outputs that are inputs ------------------------------------------------------
def _link(case: Path, shared, kind: str) -> list:
    src = _bundle(case, shared)
    link = case / "link.h5"
    (os.symlink if kind == "sym" else os.link)(src, link)
    return ["preprocess", src, "--out", link]


CASES["preprocess-out-is-in"] = (lambda c, s: ["preprocess", _bundle(c, s), "--out",
                                               c / "scan.h5"], "overwrite")
CASES["preprocess-out-is-in-dotted"] = (lambda c, s: ["preprocess", _bundle(c, s), "--out",
                                                      c / "." / "scan.h5"], "overwrite")
CASES["preprocess-out-symlink-to-in"] = (lambda c, s: _link(c, s, "sym"), "overwrite")
CASES["preprocess-out-hardlink-to-in"] = (lambda c, s: _link(c, s, "hard"), "overwrite")
CASES["predict-out-is-in"] = (lambda c, s: ["predict", _run_copy(c, s), _bundle(c, s),
                                            "--out", c / "scan.h5"], "overwrite")
CASES["predict-out-is-run-json"] = (lambda c, s: ["predict", _run_copy(c, s), _bundle(c, s),
                                                  "--out", c / "run" / "run.json"], "run")
CASES["predict-out-is-weights"] = (
    lambda c, s: ["predict", _run_copy(c, s), _bundle(c, s), "--out",
                  c / "run" / "weights.safetensors"], "run")
CASES["predict-out-in-run-preprocessed"] = (
    lambda c, s: ["predict", _run_copy(c, s), _bundle(c, s), "--out",
                  c / "run" / "preprocessed" / "x.h5"], "run")
CASES["train-out-is-the-bundle"] = (lambda c, s: ["train", _bundle(c, s), "--out",
                                                  c / "scan.h5"], "overwrite")


def _input_in(case: Path, shared, sub: str) -> Path:
    (case / "out" / sub).mkdir(parents=True)
    return _bundle(case / "out" / sub, shared)


CASES["train-input-in-run-preprocessed"] = (
    lambda c, s: ["train", _input_in(c, s, "preprocessed"), "--out", c / "out"], "overwrite")
CASES["experiment-input-in-predictions"] = (
    lambda c, s: ["experiment", _input_in(c, s, "predictions"), _bundle(c, s, "b.h5"),
                  "--strategy", "leave-one-out", "--out", c / "out"], "overwrite")
CASES["experiment-input-in-preprocessed"] = (
    lambda c, s: ["experiment", _input_in(c, s, "preprocessed"), _bundle(c, s, "b.h5"),
                  "--strategy", "leave-one-out", "--out", c / "out"], "overwrite")
CASES["experiment-out-is-a-bundle"] = (
    lambda c, s: ["experiment", _bundle(c, s), _bundle(c, s, "b.h5"), "--strategy",
                  "leave-one-out", "--out", c / "b.h5"], "folder")

# -- names that are not UTF-8 ------------------------------------------------------
CASES["preprocess-out-not-utf8"] = (lambda c, s: ["preprocess", _bundle(c, s), "--out",
                                                  c / (_NON_UTF8 + ".h5")], "UTF-8")
CASES["predict-out-not-utf8"] = (lambda c, s: ["predict", _run_copy(c, s), _bundle(c, s),
                                               "--out", c / (_NON_UTF8 + ".h5")], "UTF-8")
CASES["train-out-not-utf8"] = (lambda c, s: ["train", _bundle(c, s), "--out", c / _NON_UTF8,
                                             "--model", "ridge"], "UTF-8")
CASES["experiment-out-not-utf8"] = (
    lambda c, s: ["experiment", _bundle(c, s), _bundle(c, s, "b.h5"), "--strategy",
                  "leave-one-out", "--out", c / _NON_UTF8], "UTF-8")

# -- absurd training settings (TOML and flags) ---------------------------------------
TOML_CASES = {
    "hidden-1e9": ('model = "radial"\n[model_params]\nhidden = 1000000000\n', "hidden"),
    "hidden-float": ('model = "radial"\n[model_params]\nhidden = 1e9\n', "hidden"),
    "devices-0": ("devices = 0\n", "devices"),
    "devices-text": ('devices = "many"\n', "devices"),
    "strategy-nonsense": ('strategy = "warp_drive"\n', "strategy"),
    "seed-2^63-1": ("seed = 9223372036854775807\n", "seed"),
    "seed-negative": ("seed = -1\n", "seed"),
    "batch-inf": ("batch_size = inf\n", "batch"),
    "batch-nan": ("batch_size = nan\n", "batch"),
    "epochs-negative": ("max_epochs = -5\n", "epochs"),
    "epochs-huge": ("max_epochs = 100000000000\n", "epochs"),
    "val-fraction-2": ("val_fraction = 2.0\n", "val"),
    "workers-1e9": ("num_workers = 1000000000\n", "workers"),
    "lr-negative": ("learning_rate = -1.0\n", "learning_rate"),  # the key, not a flag
    "lr-text": ('learning_rate = "fast"\n', "learning_rate"),
    "threads-text": ('threads = "all"\n', "threads"),
    "unknown-key": ("n_outputs = -5\n", "n_outputs"),
    "model-path": ('model = "../../evil"\n', "model"),
    "targets-bad": ('targets = ["eds", "eds"]\n', "targets"),
    "not-toml": ("hidden = = 3\n", "TOML"),
}
for key, (text, fragment) in TOML_CASES.items():
    CASES[f"train-toml-{key}"] = (
        lambda c, s, t=text: ["train", _bundle(c, s), "--out", c / "r", "--config",
                              _toml(c, t)], fragment)
for key, (flags, fragment) in {"seed": (["--seed", str(2**63 - 1)], "--seed"),
                               "devices": (["--devices", "0"], "--devices"),
                               "strategy": (["--strategy", "nonsense"], "--strategy"),
                               "epochs": (["--epochs", "0"], "--epochs")}.items():
    CASES[f"train-flag-{key}"] = (
        lambda c, s, f=flags: ["train", _bundle(c, s), "--out", c / "r", *f], fragment)

# -- absurd run.json ---------------------------------------------------------------
RUN_JSON_CASES = {
    "hidden-1e9": ({"model": "radial", "model_params": {"hidden": 10**9}}, "hidden"),
    "input_shape-1e5": ({"input_shape": [1e5, 1e5]}, "input_shape"),
    "input_shape-int-1e5": ({"input_shape": [100000, 100000]}, "input_shape"),
    "n_outputs-negative": ({"n_outputs": -5}, "n_outputs"),
    "seed-2^63-1": ({"seed": 2**63 - 1}, "seed"),
    "status-weird": ({"status": "hacked"}, "status"),
    "elements-unknown": ({"elements": ["Ge", "Xx", "Te"]}, "element"),
    "elements-path": ({"elements": ["Ge", "../Sb", "Te"]}, "element"),
    "fingerprint-not-hex": ({"fingerprint": "../../x"}, "fingerprint"),
    "format-version-huge": ({"format_version": 10**9}, "version"),
    "model-path": ({"model": "../x"}, "model"),
    "target-scales-negative": ({"targets": ["eds", "haadf"],
                                "target_scales": {"haadf": -1}}, "target_scales"),
}
for key, (fields, fragment) in RUN_JSON_CASES.items():
    CASES[f"predict-run.json-{key}"] = (
        lambda c, s, f=fields: ["predict", _run_json(c, s, **f), _bundle(c, s), "--out",
                                c / "pred.h5"], fragment)


def _run_json_list(case: Path, shared) -> list:
    run = _run_copy(case, shared)
    (run / "run.json").write_text("[1, 2]")
    return ["predict", run, _bundle(case, shared), "--out", case / "pred.h5"]


CASES["predict-run.json-list"] = (_run_json_list, "run.json")

# -- metrics.json ----------------------------------------------------------------------
METRICS_CASES = {
    "list": ([1, 2], "not a JSON object"),
    "empty": ({}, "lacks"),
    "no-summary": ({k: v for k, v in _METRICS_OK.items() if k != "summary"}, "summary"),
    "elements-path": ({**_METRICS_OK, "elements": ["../../x"]}, "element"),
    "elements-unknown": ({**_METRICS_OK, "elements": ["Xx"]}, "element"),
    "figure-absolute": ({**_METRICS_OK, "figures": [{"file": "/etc/passwd"}]}, "figures"),
    "figure-parent": ({**_METRICS_OK, "figures": [{"file": "../../x.png"}]}, "figures"),
    "figure-not-dict": ({**_METRICS_OK, "figures": ["x.png"]}, "figures"),
}
for key, (doc, fragment) in METRICS_CASES.items():
    CASES[f"report-metrics-{key}"] = (lambda c, s, d=doc: ["report", _metrics(c, d)], fragment)


def _figure_link(case: Path, shared) -> list:
    folder = _metrics(case, {**_METRICS_OK, "figures": [{"file": "a.png"}]})
    secret = case / "secret.txt"
    secret.write_text("secret")
    os.symlink(secret, folder / "figures" / "a.png")
    return ["report", folder]


CASES["report-figure-symlink-out"] = (_figure_link, "link")


@pytest.mark.parametrize("name", list(CASES))
def test_untrusted_input_is_refused_in_one_line(name, tmp_path, shared, run_cli):
    make, fragment = CASES[name]
    case = tmp_path / "case"
    case.mkdir()
    argv = make(case, shared)
    before = _listing(case)
    code, out, err = run_cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (name, code, err[-2000:])
    assert fragment.lower() in lines[0].lower(), (name, lines[0])
    assert _listing(case) == before, (name, sorted(_listing(case) ^ before))


def test_catalogue_size():
    """The catalogue of bad inputs and faults: at least 150 cases across the project."""
    assert len(CASES) >= 120
    commands = {n.split("-")[0] for n in CASES}
    assert commands >= {"preprocess", "predict", "train", "experiment", "report"}


# -- what succeeds ---------------------------------------------------------------------
def test_virtual_dataset_with_sources_in_the_folder_is_read(tmp_path, shared, run_cli):
    case = tmp_path / "case"
    case.mkdir()
    bundle = _virtual(case, shared, "inside")
    code, _, err = run_cli("preprocess", bundle, "--out", case / "pre.h5", "--quiet")
    assert code == 0, err
    from stem2eds.formats.bundle import open_bundle

    with open_bundle(case / "pre.h5") as scan:
        assert scan.kind == "preprocessed"


def test_a_missing_scan_name_becomes_a_safe_one(tmp_path, shared):
    from stem2eds.formats.bundle import open_bundle

    bundle = tmp_path / "my scan (1).h5"
    shutil.copy(shared["good"], bundle)
    with h5py.File(bundle, "r+") as f:
        del f.attrs["scan_name"]
    with open_bundle(bundle) as scan:
        assert scan.name == "my scan _1_"


@pytest.mark.parametrize("text", ["Ge,Ge,Te", "Ge,ge", ["Te", "Te"]])
def test_duplicate_elements_are_refused(text):
    from stem2eds.elements import element_list
    from stem2eds.errors import InputError

    with pytest.raises(InputError, match="more than once"):
        element_list(text)


@pytest.mark.parametrize("name", ["../x", "/abs", "", ".h", "a/b", "x" * 200, 3])
def test_check_file_name_refuses(name):
    from stem2eds.errors import InputError
    from stem2eds.formats.names import check_file_name

    with pytest.raises(InputError):
        check_file_name(name)


def test_check_file_name_accepts_scan_names():
    from stem2eds.formats.names import check_file_name, name_in_folder

    for name in ("scan_0033", "0034", "GST-225.a", "Übersicht", "scan 0033"):
        assert check_file_name(name) == name
    assert name_in_folder(Path("/r"), "s1", ".h5") == Path("/r/s1.h5")
