"""Training curves: the CSVLogger's ``metrics.csv`` across resumes, and its plot."""

from __future__ import annotations

import csv
from pathlib import Path

from ..atomic import atomic_output


def read_metrics(path: Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` (empty when there is none)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def prepend_epochs(path: Path, earlier: list[dict[str, str]]) -> None:
    """Put the epochs logged before a resume back in front of the resumed ones.

    Lightning's CSVLogger deletes ``metrics.csv`` when a run resumes; rows of
    epochs the resumed run logged again (after the checkpoint) are dropped.
    """
    if not earlier:
        return
    later = read_metrics(path)
    first_new = min((int(r["epoch"]) for r in later if r.get("epoch")), default=None)
    rows = [r for r in earlier if first_new is None or int(r["epoch"]) < first_new] + later
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def plot_training_curves(metrics_csv: Path, out: Path, title: str = "",
                         loss: str = "mae") -> Path:
    """Training and validation loss against epoch, from Lightning's ``metrics.csv``.

    Parameters
    ----------
    metrics_csv : Path
        CSVLogger output with ``epoch``, ``train_loss`` and ``val_loss`` columns.
    out : Path
        PNG to write (atomically).
    title : str
    loss : str
        Name of the loss, for the axis label.

    Returns
    -------
    Path
        ``out``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[int, float]] = {"train_loss": {}, "val_loss": {}}
    for row in read_metrics(metrics_csv):
        for key in curves:
            if row.get(key):
                curves[key][int(row["epoch"]) + 1] = float(row[key])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        if curves[key]:
            epochs = sorted(curves[key])
            ax.plot(epochs, [curves[key][e] for e in epochs], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{loss.upper()} loss (weighted over targets)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
