"""The README's measurement tables, generated from benchmarks/results/*.json.

The README is read on GitHub, where nothing is generated at build time, so
its tables are written into it between marker lines

    <!-- readme-table: NAME -->
    ...
    <!-- /readme-table -->

by ``python docs/scripts/readme_tables.py`` (``make readme``), and
``tests/test_readme_tables.py`` fails when the README's copy differs from what
the JSON gives: a rerun benchmark cannot leave a stale number in the README.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- readme-table: ([a-z0-9_]+) -->\n)(.*?)(<!-- /readme-table -->)", re.S)
ELEMENTS = ("O", "Si", "Ge", "Sb", "Te")
STRATEGIES = ("extrapolate", "interpolate", "leave-one-out")


def _r(values: dict) -> str:
    return " / ".join("-" if values.get(el) is None else f"{values[el]:.3f}" for el in ELEMENTS)


def engines() -> str:
    """Per engine (held-out series): default, paper, ridge, the information bound, the EDS ceiling."""
    data = json.loads((RESULTS / "engines.json").read_text())
    rows = []
    for engine, entry in data["engines"].items():
        series = entry["series"]
        seed = series["provenance"].get("settings", {}).get("seed", "?")
        label = f"{engine}, seed {seed}"
        for model in ("radial", "paper", "ridge"):
            by_strategy = entry["models"].get(model)
            if not by_strategy:
                continue
            name = f"`{model}`" + (" (default)" if model == "radial" else "")
            cells = [_r(by_strategy[s]["pearson"]) if s in by_strategy else "not run"
                     for s in STRATEGIES]
            rows.append([label, name, *cells])
        bound = entry.get("bound", {}).get("radial")
        if bound:
            rows.append([label, "information bound (`radial`)", "", "",
                         _r(bound["pearson"])])
        # the measured EDS scored against the truth on each strategy's predicted scans
        default = entry["models"].get("radial", {})
        if default:
            rows.append([label, "EDS noise ceiling", *(
                _r(default[s]["ceiling"]) if default.get(s, {}).get("ceiling") else ""
                for s in STRATEGIES)])
    header = ["engine, held-out series", "model", "extrapolate", "interpolate", "leave-one-out"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


TABLES = {"engines": engines}


def render(text: str) -> str:
    """``text`` with every marked block replaced by its generated table."""
    def fill(m: re.Match) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise KeyError(f"README: unknown table {name!r}; known: {sorted(TABLES)}")
        return m.group(1) + TABLES[name]() + m.group(4)

    return BLOCK.sub(fill, text)


def main() -> int:
    text = README.read_text()
    new = render(text)
    if "--check" in sys.argv[1:]:
        if new != text:
            print("README.md tables differ from benchmarks/results; run "
                  "`python docs/scripts/readme_tables.py`", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
