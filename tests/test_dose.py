"""Dose and thickness: predictions of the same specimen at half and double dose.

The overall intensity of a pattern scales with the dose (and, to first
order, with the film thickness); with ``RadialParams.normalise`` the radial
model removes each pattern's mean log ring intensity, so a dose change leaves
the features unchanged up to shot noise and to the preprocessing's clip at
the training scale (1 in preprocessed units), which double dose reaches on
the brightest rings. Measured on larger scans in
``benchmarks/bench_dose.py`` (docs/transfer.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from builders import simulate_setup, small_config


@pytest.fixture(scope="module")
def doses(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("doses")
    kw = {"n_scans": 3, "detector": 128}
    return {"x1": simulate_setup(root / "x1", **kw),
            "x0.5": simulate_setup(root / "x05", dose=1e5, **kw),
            "x2": simulate_setup(root / "x2", dose=4e5, **kw)}


def _train(scans, folder: Path, normalise: bool) -> Path:
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.fit import train

    config = small_config(max_epochs=3, model_params={"normalise": normalise},
                          preprocess=PreprocessSettings(bin_factor=4, eds_kernel=3))
    return train(scans, folder / "run", config, quiet=True)


def test_normalised_features_ignore_the_overall_intensity():
    import torch

    from stem2eds.models.radial import RadialNet, RadialParams

    net = RadialNet((32, 32), 3, RadialParams(normalise=True))
    x = torch.rand(4, 32, 32) * 0.2 + 0.01
    np.testing.assert_allclose(net.frontend(0.5 * x).numpy(), net.frontend(x).numpy(),
                               atol=2e-3)  # up to the 1e-5 floor under the log
    plain = RadialNet((32, 32), 3, RadialParams(normalise=False))
    assert not np.allclose(plain.frontend(0.5 * x).numpy(), plain.frontend(x).numpy(),
                           atol=0.1)


@pytest.fixture(scope="module")
def moved(doses, tmp_path_factory) -> dict:
    """How far half and double dose move the prediction, with and without normalisation."""
    from stem2eds.predict.predictor import load_run

    out = {}
    for normalise in (True, False):
        folder = tmp_path_factory.mktemp(f"dose_run_{normalise}")
        predictor = load_run(_train(doses["x1"][:2], folder, normalise))
        base = predictor.predict_scan(doses["x1"][2]).eds
        out[normalise] = {d: float(np.abs(predictor.predict_scan(doses[d][2]).eds
                                          - base).mean()) for d in ("x0.5", "x2")}
        out[normalise]["contrast"] = float(base.std(axis=(1, 2)).mean())
    return out


@pytest.mark.slow
def test_half_dose_moves_normalised_predictions_little(moved):
    # Half dose moves the prediction by less than a quarter of the composition
    # contrast of the map itself (the map still shows the same features at the
    # same places), and by far less than without the normalisation.
    assert moved[True]["x0.5"] < 0.25 * moved[True]["contrast"], moved
    assert moved[True]["x0.5"] < 0.25 * moved[False]["x0.5"], moved


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="preprocessing clips scaled values at 1 (the training "
                                       "scale), which double dose reaches on the brightest "
                                       "rings; without the clip the change is as small as "
                                       "at half dose (benchmarks/bench_dose.py)")
def test_double_dose_moves_normalised_predictions_little(moved):
    assert moved[True]["x2"] < 0.25 * moved[True]["contrast"], moved
