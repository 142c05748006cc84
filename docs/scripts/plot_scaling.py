"""Draw docs/figures/scaling.png from benchmarks/results/scaling.json.

Left: wall time of each stage (whole process) against patterns, log-log,
with the line of time proportional to patterns through the largest size.
Right: peak resident memory against patterns (log x): flat when streaming.
Run by ``make bench`` after ``benchmarks/bench_scaling.py``::

    .venv/bin/python docs/scripts/plot_scaling.py [RESULTS.json] [FIGURE.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"convert": "tab:blue", "preprocess": "tab:orange", "predict": "tab:green"}


def plot(results: dict, out: Path) -> Path:
    """Write the two-panel figure of a ``bench_scaling`` results dict to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for stage, colour in STAGES.items():
        rows = [r for r in results["sizes"] if r.get(stage)]
        if not rows:
            continue
        n = [r["n_patterns"] for r in rows]
        t = [r[stage]["seconds"] for r in rows]
        rss = [r[stage]["peak_rss_mb"] for r in rows]
        tiled = [not r["bundle"].startswith("real") for r in rows]
        ax_t.loglog(n, t, "-", color=colour, label=stage)
        ax_m.semilogx(n, rss, "-", color=colour, label=stage)
        for x, y, m, virtual in zip(n, t, rss, tiled):
            style = dict(color=colour, mfc="white" if virtual else colour)
            ax_t.plot(x, y, "o", **style)
            ax_m.plot(x, m, "o", **style)
        if len(rows) > 1:
            # time proportional to patterns, through the largest size
            ax_t.loglog([n[0], n[-1]], [t[-1] * n[0] / n[-1], t[-1]], ":", color=colour,
                        lw=1)
    ax_t.set_xlabel("patterns (256x256 uint16)")
    ax_t.set_ylabel("wall time, whole process (s)")
    ax_t.set_title("time (dotted: proportional to patterns)")
    ax_m.set_xlabel("patterns (256x256 uint16)")
    ax_m.set_ylabel("peak RSS (MB)")
    ax_m.set_ylim(bottom=0)
    ax_m.set_title("peak memory (open marker: tiled VDS bundle)")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    prov = results["provenance"]
    fig.suptitle(f"{prov['machine']}; load average {prov['load_average_before'][0]} before, "
                 f"{prov['load_average_after'][0]} after; {prov['date']}; "
                 f"commit {prov['commit'][:9]}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    src = Path(argv[0]) if argv else ROOT / "benchmarks" / "results" / "scaling.json"
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "figures" / "scaling.png"
    print(plot(json.loads(src.read_text()), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
