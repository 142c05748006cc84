"""The numbers reported by the paper, for side-by-side comparison in reports.

"Prediction of EDS Maps from 4DSTEM Diffraction Patterns Using Convolutional
Neural Networks" (Ge-Sb-Te film, six scans 0033..0038). Pearson r is
dimensionless, MAE in atomic fraction, percentage error in percent. Only the
values the paper states are listed; missing ones are absent, never guessed.
"""

from __future__ import annotations

#: ``{strategy: {metric: {element: value}}}``; strategy names as in ``stem2eds experiment``.
PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "extrapolate": {
        "pearson": {"O": 0.68, "Si": 0.017, "Ge": 0.24, "Sb": 0.26, "Te": 0.47},
        "mae": {"O": 0.035, "Si": 0.043, "Ge": 0.052, "Sb": 0.018, "Te": 0.030},
    },
    "interpolate": {
        "pearson": {"O": 0.681, "Si": -0.0045, "Ge": 0.29, "Sb": 0.33, "Te": 0.497},
    },
    "random": {
        "pearson": {"O": 0.981, "Si": 0.950, "Ge": 0.933, "Sb": 0.959, "Te": 0.986},
        "percent_error": {"O": 4.5, "Si": 14.7, "Ge": 7.1, "Sb": 6.6, "Te": 6.1},
    },
}


def paper_value(strategy: str, metric: str, element: str) -> float | None:
    """The paper's value, or None when the paper gives none."""
    return PAPER_RESULTS.get(strategy, {}).get(metric, {}).get(element)
