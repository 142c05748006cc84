"""Experiment reports: figures (``figures``), the HTML page (``html``), the paper's numbers.

Public API: :func:`write_report` (rebuild ``report.html`` of a run directory),
:func:`render_report`, :func:`render_index`, and the figure functions in
:mod:`stem2eds.report.figures`.
"""

from .html import render_index, render_report, summary_table_html, write_report
from .paper import PAPER_RESULTS, paper_value

__all__ = ["render_index", "render_report", "summary_table_html", "write_report",
           "PAPER_RESULTS", "paper_value"]
