"""Training refuses EDS targets without variation (issue 15: all-zero maps trained to loss 0)."""

from __future__ import annotations

import numpy as np
import pytest

from stem2eds.errors import InputError
from stem2eds.train.data import check_target_variation


def test_all_zero_and_nearly_constant_targets_are_refused(rng):
    varied = rng.random(400)
    with pytest.raises(InputError, match="EDS target Ni does not vary .* 400 training"):
        check_target_variation(np.stack([varied, np.zeros(400)], axis=1), ["Fe", "Ni"], ["a.h5"])
    nearly = np.zeros(400)
    nearly[:2] = 0.3  # 2 of 400 positions with counts
    with pytest.raises(InputError, match="Cu does not vary"):
        check_target_variation(np.stack([nearly, varied], axis=1), ["Cu", "Fe"], ["a.h5"])


def test_varying_targets_pass(rng):
    check_target_variation(rng.random((400, 3)), ["O", "Si", "Ge"], ["a.h5"])
