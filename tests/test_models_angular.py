"""The ``angular`` model: ring means plus rotation-invariant angular moments of the rings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from builders import make_raw_scan, small_config


@pytest.fixture(scope="module")
def raw_scan(tmp_path_factory):
    return make_raw_scan(tmp_path_factory.mktemp("raw") / "scan_a.h5", seed=1)


def _spots(q: int, order: int, radius: float, rotation: float = 0.0) -> torch.Tensor:
    """A centred pattern with ``order`` Gaussian spots on a ring (a crystallite's zone axis)."""
    c = (q - 1) / 2
    yy, xx = np.mgrid[0:q, 0:q] - c
    img = np.zeros((q, q))
    for j in range(order):
        a = rotation + 2 * np.pi * j / order
        img += np.exp(-((yy - radius * np.sin(a)) ** 2 + (xx - radius * np.cos(a)) ** 2) / 2.0)
    return torch.from_numpy(img[None].astype(np.float32))


def test_moments_see_the_symmetry_of_spots_and_ignore_their_orientation():
    from stem2eds.models.angular import AngularMoments

    m = AngularMoments((48, 48), orders=(2, 4, 6), band=2)
    band = int(15 // 2)
    six = m(_spots(48, 6, 15.0))[0, :, band]
    assert six[2] > 0.8 and six[0] < 0.1 and six[1] < 0.1  # k=6 only
    four = m(_spots(48, 4, 15.0))[0, :, band]
    assert four[1] > 0.8 and four[0] < 0.1
    turned = m(_spots(48, 6, 15.0, rotation=0.37))[0, :, band]
    assert torch.allclose(turned, six, atol=0.05)


def test_isotropic_ring_has_no_angular_moments():
    from stem2eds.models.angular import AngularMoments

    q = 64
    yy, xx = np.mgrid[0:q, 0:q] - (q - 1) / 2
    ring = np.exp(-(np.hypot(yy, xx) - 20.0) ** 2 / 8.0).astype(np.float32)
    out = AngularMoments((q, q), orders=(2, 4, 6), band=2)(torch.from_numpy(ring[None]))
    assert float(out[0, :, 8:12].max()) < 0.05


def test_angular_frontend_is_rotation_invariant_and_extends_radial():
    from stem2eds.models import build_model

    torch.manual_seed(0)
    x = torch.rand(4, 32, 32)
    model = build_model("angular", (32, 32), 4, {"orders": [2, 6], "band": 3})
    radial = build_model("radial", (32, 32), 4, {})
    feats = model.frontend(x)
    n_radial = radial.frontend(x).reshape(4, -1).shape[1]
    assert feats.shape == (4, 1, n_radial + model.extra_features((32, 32), model.params))
    assert torch.allclose(feats[:, 0, :n_radial], radial.frontend(x).reshape(4, -1))
    assert torch.allclose(model.frontend(torch.rot90(x, 1, (1, 2))), feats, atol=1e-4)
    assert model.forward(x).shape == (4, 4)


@pytest.mark.parametrize("bad", [{"orders": [3]}, {"orders": []}, {"band": 0}])
def test_angular_params_are_validated(bad):
    from stem2eds.errors import InputError
    from stem2eds.models import build_model

    with pytest.raises(InputError):
        build_model("angular", (32, 32), 4, bad)


def test_angular_model_trains_and_predicts(raw_scan, tmp_path):
    from stem2eds.predict.predictor import load_run
    from stem2eds.train.fit import train

    run = train([raw_scan], tmp_path / "run", small_config(model="angular", max_epochs=4),
                quiet=True)
    info = json.loads((run / "run.json").read_text())
    assert info["model"] == "angular" and info["model_params"]["orders"] == [2, 4, 6]
    pred = load_run(run).predict_scan(raw_scan)
    assert pred.eds.shape[0] == len(info["elements"])
    assert np.isfinite(pred.eds).all() and (pred.eds >= 0).all() and (pred.eds <= 1).all()


def test_angular_is_not_fed_ring_statistics_alone():
    """The fused path computes only ring statistics: a model that needs the 2D pattern must not get it."""
    from stem2eds.models import build_model
    from stem2eds.models.rings import RingFrontend

    assert not isinstance(build_model("angular", (32, 32), 4, {}), RingFrontend)
    assert isinstance(build_model("radial", (32, 32), 4, {}), RingFrontend)
