"""CLI options generated from the settings dataclasses: one definition of each default."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from stem2eds.cli.options import Option, add_settings_options, attribute_docs, given, name_flags
from stem2eds.train.config import TrainConfig


@pytest.mark.parametrize("module, name", [("stem2eds.train.config", "TrainConfig"),
                                          ("stem2eds.preprocess.settings", "PreprocessSettings"),
                                          ("stem2eds.simulate.series", "SimulationSettings")])
def test_every_setting_has_a_description(module, name):
    import importlib

    cls = getattr(importlib.import_module(module), name)
    docs = attribute_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name, ("", ""))[1]]
    assert missing == []


def test_training_setting_docs_are_parsed():
    docs = attribute_docs(TrainConfig)
    assert docs["max_epochs"][1] == "Maximum number of epochs."
    assert docs["loss"][0] == '{"mae", "mse", "huber"}'


def test_help_shows_the_dataclass_default_and_choices():
    p = argparse.ArgumentParser()
    add_settings_options(p, TrainConfig, ["loss", Option("max_epochs", "--epochs")])
    text = p.format_help()
    assert "(default: 200)" in text and "(default: mae)" in text
    assert "{mae,mse,huber}" in text
    with pytest.raises(SystemExit):
        p.parse_args(["--loss", "l3"])


def test_only_given_settings_override():
    p = argparse.ArgumentParser()
    add_settings_options(p, TrainConfig, ["loss", Option("max_epochs", "--epochs"), "seed"])
    args = p.parse_args(["--epochs", "5"])
    assert given(args, TrainConfig) == {"max_epochs": 5}
    assert args.setting_flags == {"loss": "--loss", "max_epochs": "--epochs", "seed": "--seed"}


def test_unknown_setting_is_a_programming_error():
    with pytest.raises(ValueError, match="no setting"):
        add_settings_options(argparse.ArgumentParser(), TrainConfig, ["epochs"])


def test_library_messages_get_the_flags_the_user_typed():
    flags = {"max_epochs": "--epochs", "scale": "--scale", "crop": "--crop"}
    assert name_flags("max_epochs must be at least 1, got 0", flags) == \
        "--epochs must be at least 1, got 0"
    # backquoted names (the library's convention) anywhere, unmapped ones with dashes
    assert name_flags("bad `crop`; set `beam_radius`", flags) == "bad --crop; set --beam-radius"
    assert name_flags("scale must be positive", flags) == "--scale must be positive"
    # a plain word inside prose is left alone
    assert name_flags("the crop leaves no positions", flags) == "the crop leaves no positions"


def test_cli_error_names_the_flag(run_cli, tmp_path):
    code, _, err = run_cli("train", tmp_path / "x.h5", "--out", tmp_path / "r", "--epochs", "0")
    assert code == 2 and "--epochs must be at least 1" in err and "max_epochs" not in err


def test_keyword_settings_in_library_errors_become_flags():
    from stem2eds.cli.options import name_flags

    flags = {"resume": "--resume", "device": "--device", "targets": "--targets",
             "run_dir": "--out"}
    assert name_flags("start a new run without resume=True", flags) == \
        "start a new run without --resume"
    assert name_flags('use device="cpu" or device="auto"', flags) == \
        "use --device cpu or --device auto"
    assert name_flags("train with targets='eds'", flags) == "train with --targets eds"
    assert name_flags("choose another run_dir", flags) == "choose another --out"
    assert name_flags("resumed=True stays", flags) == "resumed=True stays"


def test_a_command_argument_named_like_a_setting_is_not_a_setting():
    # experiment --strategy (cross-scan strategy) vs TrainConfig.strategy (Lightning's)
    p = argparse.ArgumentParser()
    p.add_argument("--strategy")
    add_settings_options(p, TrainConfig, ["seed"])
    assert given(p.parse_args(["--strategy", "extrapolate", "--seed", "3"]), TrainConfig) == \
        {"seed": 3}


def test_building_the_cli_imports_no_heavy_library():
    # Options come from the settings dataclasses; reading them must not load
    # torch, Lightning or SciPy, so that `stem2eds --help` stays instant.
    import subprocess
    import sys

    code = ("import sys, stem2eds.cli as c; c.build_parser(); "
            "heavy = [m for m in ('torch', 'lightning', 'scipy', 'hyperspy') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
