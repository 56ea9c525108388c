"""Metric helpers: order fits recover known slopes, confidence intervals cover them, the Pareto
front is the set of non-dominated points, error metrics are what they claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samplerbench.bench.metrics import error_metrics, fit_order, fit_order_ci, nonconv, pareto_front


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0, 3.0, 4.0])
def test_fit_order_recovers_synthetic_slope(p):
    nfe = np.array([8, 16, 32, 64, 128])
    err = 3.0 * nfe ** -p
    assert fit_order(nfe, err) == pytest.approx(p, abs=1e-12)
    rng = np.random.default_rng(0)
    noisy = err * np.exp(rng.normal(0, 0.05, size=err.shape))
    q, lo, hi = fit_order_ci(nfe, noisy, n_points=5)
    assert lo < p < hi and hi - lo < 0.5 and q == pytest.approx(p, abs=0.15)


def test_fit_order_uses_the_asymptotic_points_above_the_floor():
    nfe = [4, 8, 16, 32, 64, 128]
    err = [0.5, 0.4, 16.0 ** -2, 32.0 ** -2, 64.0 ** -2, 1e-14]   # pre-asymptotic, then a floor
    assert fit_order(nfe, err) == pytest.approx(2.0, abs=1e-12)
    assert fit_order([4], [0.1]) is None
    assert fit_order_ci([4, 8], [0.1, 0.05])[1:] == (None, None)


def test_pareto_front():
    cost = [1.0, 2.0, 3.0, 1.5, 4.0]
    err = [0.5, 0.2, 0.3, 0.6, 0.1]
    assert pareto_front(cost, err) == [0, 1, 4]


def test_error_metrics_and_nonconv():
    a = torch.zeros(2, 1, 2, 2)
    b = a.clone()
    b[0] += 1.0          # sample 0: RMS 1; sample 1: RMS 0
    b[1, 0, 0, 0] = -3.0  # sample 1: RMS sqrt(9/4) = 1.5
    m = error_metrics(b, a)
    assert m["err_rms"] == pytest.approx((1.0 + 1.5) / 2) and m["err_max"] == pytest.approx(3.0)
    assert nonconv(b, a) == pytest.approx(1.25)
