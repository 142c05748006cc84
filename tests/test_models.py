"""Models: ring statistics layer, the registry, shapes, invariances, the ridge fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stem2eds.errors import InputError
from stem2eds.models import DEFAULT_MODEL, MODELS, build_model, get_model
from stem2eds.models.rings import RingStatistics, n_rings, ring_index


def _reference_ring_stats(patterns: np.ndarray):
    """Per-ring mean / std / max with an explicit loop over rings (slow, obvious)."""
    q = patterns.shape[1]
    c = (q - 1) / 2
    r = np.floor(np.hypot(*np.meshgrid(np.arange(q) - c, np.arange(q) - c, indexing="ij")))
    rings = int(r.max()) + 1
    out = np.zeros((len(patterns), 3, rings))
    for k in range(rings):
        vals = patterns[:, r == k]
        out[:, 0, k] = vals.mean(axis=1)
        out[:, 1, k] = vals.std(axis=1)
        out[:, 2, k] = vals.max(axis=1)
    return out


@pytest.mark.parametrize("q", [16, 17, 32])
def test_ring_statistics_match_reference(q, rng):
    patterns = rng.random((5, q, q)).astype(np.float32)
    layer = RingStatistics((q, q))
    got = layer(torch.from_numpy(patterns)).numpy()
    assert got.shape == (5, 3, n_rings((q, q)))
    np.testing.assert_allclose(got, _reference_ring_stats(patterns), rtol=1e-4, atol=1e-5)


def test_ring_mean_agrees_with_preprocess_radial_profile(rng):
    from stem2eds.preprocess import radial_profile

    patterns = rng.random((4, 32, 32)).astype(np.float32)
    mine = RingStatistics((32, 32), ("mean",))(torch.from_numpy(patterns))[:, 0].numpy()
    theirs = radial_profile(patterns)          # rings inside the inscribed circle
    np.testing.assert_allclose(mine[:, :theirs.shape[1]], theirs, rtol=1e-5, atol=1e-6)


def test_ring_index_is_centred():
    idx = ring_index((4, 4)).reshape(4, 4)
    # pixel centres at +-0.5, +-1.5 from the centre 1.5: radius 0.71, 1.58, 2.12
    assert idx[1, 1] == idx[2, 2] == 0
    assert idx[0, 0] == idx[3, 3] == 2
    assert torch.equal(idx, idx.flip(0)) and torch.equal(idx, idx.T)


def test_registry():
    assert {"paper", "ridge", DEFAULT_MODEL} <= set(MODELS)
    assert DEFAULT_MODEL == "radial"
    with pytest.raises(InputError, match="unknown model"):
        get_model("unet")
    with pytest.raises(InputError, match="hyperparameters"):
        build_model("radial", (32, 32), 3, {"no_such_option": 1})


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(16, 16), (33, 33), (64, 48)])
def test_models_take_any_input_size(name, shape):
    torch.manual_seed(0)
    net = build_model(name, shape, 6).eval()
    out = net(torch.rand(7, *shape))
    assert out.shape == (7, 6) and torch.isfinite(out).all()
    assert isinstance(net.hparams, dict)


def test_radial_model_is_rotation_invariant():
    """Rotating a pattern by 90 degrees about the centre leaves the prediction unchanged."""
    torch.manual_seed(0)
    net = build_model("radial", (32, 32), 4).eval()
    x = torch.rand(3, 32, 32)
    with torch.no_grad():
        a, b = net(x), net(torch.rot90(x, 1, dims=(1, 2)))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_paper_model_is_not_rotation_invariant():
    torch.manual_seed(0)
    net = build_model("paper", (32, 32), 4).eval()
    x = torch.rand(3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(net(x), net(torch.rot90(x, 1, dims=(1, 2))), atol=1e-6)


@pytest.mark.parametrize("name", ["radial", "paper"])
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    net = build_model(name, (32, 32), 3).train()
    net(torch.rand(8, 32, 32)).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_ridge_recovers_a_linear_relation(rng):
    net = build_model("ridge", (24, 24), 2)
    patterns = torch.from_numpy(rng.random((200, 24, 24)).astype(np.float32))
    feats = net.features(patterns).numpy()
    true_w = rng.normal(size=(feats.shape[1], 2))
    targets = feats @ true_w + np.array([0.3, -0.1])
    net.fit(feats, targets)
    pred = net(patterns).detach().numpy()
    np.testing.assert_allclose(pred, targets, atol=0.05 * np.abs(targets).max())
    assert np.isclose(net.alpha.item(), net.hparams["alphas"], rtol=1e-6).any()
    # the state (coefficients, feature scaling) is what gets saved
    assert {"weight", "bias", "feature_mean", "feature_scale"} <= set(net.state_dict())


def test_paper_cnn_rejects_tiny_input():
    with pytest.raises(InputError):
        build_model("paper", (1, 1), 3)


def test_radial_model_can_ignore_overall_intensity():
    """Normalised profiles: scaling a whole pattern (dose, thickness) changes nothing."""
    torch.manual_seed(0)
    net = build_model("radial", (32, 32), 4, {"normalise": True}).eval()
    x = torch.rand(3, 32, 32) + 0.01
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(3.0 * x), rtol=1e-4, atol=1e-4)
    raw = build_model("radial", (32, 32), 4, {"normalise": False}).eval()
    raw.linear.weight.data.normal_()  # non-zero weights, as after training
    with torch.no_grad():
        assert not torch.allclose(raw(x), raw(3.0 * x), atol=1e-3)


def test_radial_frontend_then_features_equals_forward():
    torch.manual_seed(0)
    net = build_model("radial", (32, 32), 4, {"statistics": ("mean", "std", "max")}).eval()
    x = torch.rand(5, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_features(net.frontend(x)), net(x))


def test_radial_starts_at_the_ridge_solution(rng):
    """Before training, the radial model predicts exactly what ridge does on the same features.

    ``ridge`` keeps each pattern's level, so the comparison is with ``normalise`` off.
    """
    patterns = torch.from_numpy(rng.random((150, 24, 24)).astype(np.float32) + 0.01)
    radial = build_model("radial", (24, 24), 3, {"n_hidden": 2, "normalise": False}).eval()
    ridge = build_model("ridge", (24, 24), 3)
    feats = ridge.features(patterns).numpy()
    targets = feats @ rng.normal(size=(feats.shape[1], 3)) + rng.normal(0, 0.1, (150, 3))
    ridge.fit(feats, targets)
    alpha = radial.init_from_data(radial.frontend(patterns), torch.from_numpy(targets))
    assert alpha == pytest.approx(ridge.alpha.item())
    with torch.no_grad():
        torch.testing.assert_close(radial(patterns), ridge(patterns).float(),
                                   rtol=1e-4, atol=1e-4)
        assert radial.correction(torch.randn(4, radial.linear.in_features)).abs().max() == 0
    # the start (feature and target scaling, linear map) is part of the saved state
    assert {"feature_mean", "feature_scale", "target_mean", "target_scale",
            "linear.weight"} <= set(radial.state_dict())
    # the trainable layers work in target standard deviations
    np.testing.assert_allclose(radial.target_scale.numpy(), targets.std(axis=0), rtol=1e-5)
    # n_hidden = 0: no correction, linear in the log ring means
    assert build_model("radial", (24, 24), 3, {"n_hidden": 0}).correction is None


def test_radial_loads_weights_saved_before_target_scaling(rng):
    """State dicts without target_mean/target_scale load as the identity scaling."""
    net = build_model("radial", (16, 16), 2, {"n_hidden": 2})
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("target_")}
    fresh = build_model("radial", (16, 16), 2, {"n_hidden": 2})
    fresh.target_scale.fill_(7.0)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.target_scale, torch.ones(2))
    assert torch.equal(fresh.target_mean, torch.zeros(2))


# -- the model interface and typed hyperparameters --------------------------------

def test_registry_refuses_a_model_without_the_interface(monkeypatch):
    from torch import nn

    from stem2eds.models import StemModel, register_model
    from stem2eds.models.base import ModelParams

    class Plain(nn.Module):
        name = "plain"

        def forward(self, x):
            return x

    class Half(StemModel):  # forward left abstract
        name = "half"
        Params = ModelParams

    for cls in (Plain, Half):
        with pytest.raises(TypeError):
            register_model(cls)
        monkeypatch.setitem(MODELS, cls.name, cls)
        with pytest.raises(TypeError):
            build_model(cls.name, (16, 16), 2)


def test_models_implement_their_capabilities():
    from stem2eds.models import ClosedFormModel, FixedFrontend, StemModel

    nets = {name: build_model(name, (16, 16), 2) for name in MODELS}
    assert all(isinstance(n, StemModel) for n in nets.values())
    assert isinstance(nets["radial"], FixedFrontend)
    assert isinstance(nets["ridge"], ClosedFormModel)
    assert not isinstance(nets["paper"], (FixedFrontend, ClosedFormModel))
    assert nets["ridge"].output_layer is None and nets["paper"].output_layer is not None


@pytest.mark.parametrize("params, match", [
    ({"hiden": 3}, r"model_params\.hiden"),
    ({"hidden": "64"}, r"model_params\.hidden must be int"),
    ({"hidden": True}, r"model_params\.hidden must be int"),
    ({"dropout": "x"}, r"model_params\.dropout must be float"),
    ({"statistics": "mean"}, r"model_params\.statistics must be a list"),
    ({"statistics": ["mean", "median"]}, "statistics"),
    ({"hidden": 0}, "hidden"),
    ({"hidden": 10**9}, "hidden"),
])
def test_hyperparameters_are_validated_into_a_dataclass(params, match):
    with pytest.raises(InputError, match=match):
        build_model("radial", (16, 16), 2, params)


def test_hyperparameters_typed_and_recorded_as_a_table():
    from stem2eds.models import RadialParams, model_params

    p = model_params("radial", {"hidden": 8, "dropout": 0, "statistics": ["mean", "max"]})
    assert p == RadialParams(hidden=8, dropout=0.0, statistics=("mean", "max"))
    net = build_model("radial", (16, 16), 2, p)
    assert net.params is p
    assert net.hparams["statistics"] == ["mean", "max"] and net.hparams["hidden"] == 8
    assert build_model("paper", (16, 16), 2, {"channels": [4, 8]}).hparams["channels"] == [4, 8]


def test_train_config_checks_model_and_params_once():
    from stem2eds.models import RadialParams
    from stem2eds.train.config import TrainConfig

    cfg = TrainConfig(model_params={"n_hidden": 0})
    assert cfg.hparams == RadialParams(n_hidden=0)
    assert cfg.to_dict()["model_params"] == {"n_hidden": 0}    # the table as given
    with pytest.raises(InputError, match=r"model_params\.widht"):
        TrainConfig.from_dict({"model_params": {"widht": 3}})
    with pytest.raises(InputError, match="unknown model"):
        TrainConfig(model="resnet")
