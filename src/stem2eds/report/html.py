"""The experiment report: one self-contained HTML page per run directory.

Everything the page shows comes from the run directory: ``metrics.json``
(settings, split, numbers) and the PNG figures listed in it under
``figures`` (embedded as base64, so the page is a single file that can be
mailed or archived). :func:`render_report` is pure (dict and bytes in, text
out); :func:`write_report` reads and writes the files.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..atomic import atomic_output
from ..formats.metrics_file import figure_path, read_metrics
from .paper import PAPER_RESULTS

METRIC_LABELS = {
    "pearson": "Pearson r",
    "mae": "MAE (atomic fraction)",
    "percent_error": "percentage error (%)",
    "r2": "R\u00b2",
}

DEFINITIONS = (
    "<b>Pearson r</b>: linear correlation of predicted and actual values over the evaluated "
    "positions of a scan. <b>MAE</b>: mean |predicted &minus; actual| in atomic fraction "
    "(0.01 = 1 at.%). <b>Percentage error</b>: 100 &times; MAE / mean(|actual|) per element, "
    "i.e. the MAE relative to the element's mean content. <b>R\u00b2</b>: 1 &minus; "
    "&Sigma;(actual &minus; predicted)\u00b2 / &Sigma;(actual &minus; mean)\u00b2 (negative = "
    "worse than predicting the mean). Mean &plusmn; std are over the predicted scans "
    "(population std). <i>Actual</i> is the preprocessed (blurred, cropped) EDS map, the "
    "training target; the <i>truth</i> table compares with the simulator's noise-free "
    "composition instead. <b>Calibrated</b>: a per-element correction fitted on the training "
    "positions only, applied to every prediction. A linear correction with a positive slope "
    "cannot change Pearson r (only MAE, percentage error and R\u00b2); polynomial and isotonic "
    "corrections can."
)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;
margin-top:2rem}table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .55rem;text-align:right}
th{background:#f0f3f7}td.l,th.l{text-align:left}figure{margin:1.2rem 0}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.9rem;color:#444}
.note{font-size:.9rem;color:#444;background:#f8f8f2;padding:.5rem .8rem;border-left:3px solid #bbb}
.good{color:#1a7f37;font-weight:600}.bad{color:#b42318}
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _mean_std(summary: Mapping[str, Any] | None, metric: str, element: str) -> str:
    try:
        cell = summary[metric][element]  # type: ignore[index]
    except (KeyError, TypeError):
        return "n/a"
    mean, std = cell.get("mean"), cell.get("std")
    if mean is None:
        return "n/a"
    return f"{mean:.3f} &plusmn; {std:.3f}" if std is not None and cell.get("n", 1) > 1 \
        else f"{mean:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text: bool = False) -> str:
    """An HTML table; numbers right-aligned, the first column (or all, ``text``) left."""
    head = "".join(f"<th{' class=l' if i == 0 or text else ''}>{h}</th>"
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{' class=l' if i == 0 or text else ''}>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def model_label(metrics: Mapping[str, Any]) -> str:
    """How the report names the trained model: its registered name (e.g. ``radial``)."""
    return str(metrics.get("model") or "model")


def _series(metrics: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any] | None]]:
    """(label, summary) of the chosen model, its calibration and the baseline."""
    base = metrics.get("baseline") or {}
    model, base_model = model_label(metrics), base.get("model", "ridge")
    return [(model, metrics.get("summary")),
            (f"{model} calibrated", (metrics.get("calibrated") or {}).get("summary")),
            (f"{base_model} baseline", base.get("summary")),
            (f"{base_model} calibrated", (base.get("calibrated") or {}).get("summary"))] + \
        ([(f"{base_model} + the {model} model's EDS filter",
           base["filtered"].get("summary"))] if base.get("filtered") else [])


def _summary_tables(metrics: Mapping[str, Any]) -> str:
    elements = metrics.get("elements", [])
    out = []
    for metric, label in METRIC_LABELS.items():
        series = _series(metrics)
        header = ["element"] + [name for name, _ in series]
        rows = [[el] + [_mean_std(s, metric, el) for _, s in series] for el in elements]
        out.append(f"<h3>{label}</h3>" + _table(header, rows))
    return "".join(out)


def _paper_table(metrics: Mapping[str, Any]) -> str:
    strategy = metrics.get("strategy", "")
    paper = PAPER_RESULTS.get(strategy)
    if not paper:
        return ("<p class=note>The paper reports no numbers for the "
                f"<code>{html.escape(strategy)}</code> strategy.</p>")
    elements = [e for e in metrics.get("elements", [])]
    series = _series(metrics)
    parts = []
    for metric, values in paper.items():
        header = ["element", "paper"] + [name for name, _ in series]
        rows = []
        for el in elements:
            rows.append([el, _fmt(values.get(el))] + [_mean_std(s, metric, el)
                                                     for _, s in series])
        parts.append(f"<h3>{METRIC_LABELS[metric]}: this run vs the paper</h3>"
                     + _table(header, rows))
    note = ("<p class=note>The paper's values are for its measured Ge-Sb-Te series "
            "(scans 0033..0038); this run's data may differ (e.g. a simulated series), so the "
            "comparison shows the scale of the numbers, not a reproduction.</p>")
    return note + "".join(parts)


def _per_scan_table(metrics: Mapping[str, Any], key: str, metric: str = "pearson") -> str:
    block = metrics if key == "raw" else (metrics.get(key) or {})
    scans = block.get("scans") or {}
    elements = metrics.get("elements", [])
    rows = [[html.escape(s)] + [_fmt((scans[s].get(metric) or {}).get(el)) for el in elements]
            for s in scans]
    return _table(["scan"] + list(elements), rows) if rows else "<p>n/a</p>"


def _haadf_table(metrics: Mapping[str, Any]) -> str:
    scans = metrics.get("scans") or {}
    rows = []
    for s, m in scans.items():
        h = m.get("haadf")
        if h:
            rows.append([html.escape(s)] + [_fmt(h.get(k)) for k in METRIC_LABELS])
    if not rows:
        return ("<p>HAADF was not predicted in this run (set the training targets to "
                "<code>eds,haadf</code>).</p>")
    header = ["scan", "Pearson r", "MAE (HAADF units)", "percentage error (%)", "R\u00b2"]
    return _table(header, rows)


def _truth_table(metrics: Mapping[str, Any]) -> str:
    truth = metrics.get("truth")
    if not truth:
        return "<p>No noise-free truth in these bundles (measured data).</p>"
    elements = metrics.get("elements", [])
    model = model_label(metrics)
    base_model = (metrics.get("baseline") or {}).get("model", "ridge")
    rows = []
    for label, key in ((f"{model} vs truth", "summary"),
                       (f"{model} calibrated vs truth", "calibrated"),
                       (f"{base_model} calibrated vs truth", "baseline"),
                       ("measured EDS target vs truth (noise ceiling)", "ceiling")):
        summary = truth.get(key)
        rows.append([label] + [_mean_std(summary, "pearson", el) for el in elements])
    return ("<p>Pearson r against the simulator's noise-free composition. The last row is how "
            "well the blurred measured EDS map itself matches the truth: a model trained on it "
            "can hardly do better.</p>" + _table(["Pearson r"] + list(elements), rows))


def _settings_table(metrics: Mapping[str, Any]) -> str:
    rows = []
    for key in ("strategy", "model", "filter_predictions", "split", "split_description",
                "calibration", "targets", "epochs", "seed", "train_scans", "test_scans", "evaluated_positions"):
        if key in metrics:
            value = metrics[key]
            if isinstance(value, (list, tuple)):
                value = ", ".join(str(v) for v in value)
            elif isinstance(value, Mapping):
                value = json.dumps(value)
            rows.append([key.replace("_", " "), html.escape(str(value))])
    for part in metrics.get("parts", []):
        rows.append([f"part {html.escape(part['name'])}",
                     "train on " + html.escape(", ".join(part["train_scans"]))
                     + " &rarr; predict " + html.escape(", ".join(part["test_scans"]))])
    pre = metrics.get("preprocess")
    if pre:
        rows.append(["preprocessing", html.escape(json.dumps(pre))])
    return _table(["setting", "value"], rows, text=True)


def render_report(metrics: Mapping[str, Any],
                  figures: Sequence[tuple[str, str, bytes]],
                  title: str | None = None, explorer: str = "") -> str:
    """The report page as HTML text.

    Parameters
    ----------
    metrics : mapping
        The content of ``metrics.json``.
    figures : sequence of (title, caption, png_bytes)
        Embedded in this order.
    title : str, optional
        Page title; defaults to the strategy name.
    explorer : str
        The interactive maps section
        (:func:`stem2eds.report.interactive.render_interactive`), shown first.

    Returns
    -------
    str
        A complete, self-contained HTML document.
    """
    strategy = metrics.get("strategy", "experiment")
    title = title or f"stem2eds {strategy} experiment"
    figs = "".join(
        f"<figure><img alt='{html.escape(t)}' src='data:image/png;base64,"
        f"{base64.b64encode(png).decode()}'><figcaption><b>{html.escape(t)}.</b> "
        f"{html.escape(c)}</figcaption></figure>" for t, c, png in figures)
    split = metrics.get("split_description") or metrics.get("split", "")
    created = metrics.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(
        timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><link rel="icon" href="data:,"><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Created {html.escape(str(created))} by stem2eds {html.escape(str(metrics.get('stem2eds_version', '')))}.
Split used: <b>{html.escape(str(split))}</b>.</p>
{explorer}
<h2>Settings</h2>{_settings_table(metrics)}
<h2>Results (mean &plusmn; std over predicted scans)</h2>
<p class=note>{DEFINITIONS}</p>
{_summary_tables(metrics)}
<h2>Comparison with the paper</h2>{_paper_table(metrics)}
<h2>Per scan: Pearson r (raw {html.escape(model_label(metrics))})</h2>{_per_scan_table(metrics, 'raw')}
<h2>Per scan: Pearson r (calibrated {html.escape(model_label(metrics))})</h2>{_per_scan_table(metrics, 'calibrated')}
<h2>Against the noise-free truth</h2>{_truth_table(metrics)}
<h2>HAADF</h2>{_haadf_table(metrics)}
<h2>Figures</h2>{figs or '<p>No figures.</p>'}
</body></html>
"""


def write_report(run_dir: str | os.PathLike, quiet: bool = True) -> Path:
    """(Re)build ``RUN_DIR/report.html`` from ``metrics.json`` and ``figures/``.

    Parameters
    ----------
    run_dir : path-like
        An experiment run directory (any strategy; a ``sparse`` run gets the
        sparse page of :mod:`stem2eds.report.beyond`).
    quiet : bool
        No progress on stderr while the raw scans' patterns are read for the
        map explorer.

    Returns
    -------
    Path
        The written ``report.html``.

    Raises
    ------
    InputError
        If the directory has no valid ``metrics.json`` (see
        :func:`stem2eds.formats.metrics_file.read_metrics`).
    """
    run = Path(run_dir)
    metrics = read_metrics(run)
    if metrics["strategy"] == "sparse":
        from .beyond import write_beyond_report

        return write_beyond_report(run, metrics, quiet=quiet)
    figures = []
    for entry in metrics.get("figures", []):
        # figure_path accepts only files in RUN/figures (validated on read)
        png = figure_path(run, entry["file"])
        if png.is_file():
            figures.append((entry.get("title", png.stem), entry.get("caption", ""),
                            png.read_bytes()))
    from .interactive import render_interactive
    from .interactive_data import collect_views

    text = render_report(metrics, figures, explorer=render_interactive(
        collect_views(run, metrics, quiet)))
    out = run / "report.html"
    with atomic_output(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def render_index(entries: Sequence[tuple[str, str, str]], title: str = "stem2eds demo") -> str:
    """An index page linking several reports.

    Parameters
    ----------
    entries : sequence of (name, relative_link, summary_html)
        ``summary_html`` is trusted HTML made by the caller (e.g. a table).
    """
    items = "".join(f"<h2><a href='{html.escape(link)}'>{html.escape(name)}</a></h2>{summary}"
                    for name, link, summary in entries)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{items}</body></html>
"""


def summary_table_html(metrics: Mapping[str, Any], metric: str = "pearson") -> str:
    """A small table of one metric (mean &plusmn; std) per element for every series."""
    elements = metrics.get("elements", [])
    series = _series(metrics)
    paper = PAPER_RESULTS.get(metrics.get("strategy", ""), {}).get(metric, {})
    header = ["element"] + [n for n, _ in series] + (["paper"] if paper else [])
    rows = [[el] + [_mean_std(s, metric, el) for _, s in series]
            + ([_fmt(paper.get(el))] if paper else []) for el in elements]
    return f"<p>{METRIC_LABELS[metric]}, mean &plusmn; std over predicted scans:</p>" + \
        _table(header, rows)
