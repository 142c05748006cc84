"""The README's measurement tables equal what benchmarks/results/*.json give."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("readme_tables",
                                                  ROOT / "docs" / "scripts" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_tables_are_current():
    mod = _module()
    text = (ROOT / "README.md").read_text()
    assert "<!-- readme-table: engines -->" in text
    assert mod.render(text) == text, "run `python docs/scripts/readme_tables.py`"


def test_engines_table_carries_the_json_numbers():
    mod = _module()
    data = json.loads((ROOT / "benchmarks" / "results" / "engines.json").read_text())
    table = mod.engines()
    for engine, entry in data["engines"].items():
        r = entry["models"]["radial"]["leave-one-out"]["pearson"]
        row = next(line for line in table.splitlines()
                   if line.startswith(f"| {engine},") and "(default)" in line)
        assert " / ".join(f"{r[el]:.3f}" for el in mod.ELEMENTS) in row
        for model in ("paper", "ridge"):
            if model in entry["models"]:
                assert any(f"`{model}`" in line and line.startswith(f"| {engine},")
                           for line in table.splitlines())


def test_a_stale_readme_table_is_caught():
    mod = _module()
    stale = "x\n<!-- readme-table: engines -->\n| old |\n<!-- /readme-table -->\ny\n"
    assert mod.render(stale) != stale
    with pytest.raises(KeyError):
        mod.render("<!-- readme-table: nope -->\n<!-- /readme-table -->")
