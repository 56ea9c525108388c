"""The analytic GMM denoiser: exact posterior mean, Tweedie, exact samples, gmm:PATH.json, gmm64."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from samplerbench.models import load_model
from samplerbench.models.conversions import eps_from_x0, expand_like
from samplerbench.models.errors import UserError
from samplerbench.models.gmm import GaussianMixture, GMMDenoiser, gmm2d_mixture
from samplerbench.models.schedules import make_schedule

SCHEDULE_NAMES = ("edm", "vp-linear", "rf", "vp-cosine", "ve", "trig")


def random_spd(d, g, lo=0.05):
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return A @ A.T / d + lo * torch.eye(d, dtype=torch.float64)


def times(s, n=5):
    """n times spread (geometrically) inside the sampling interval."""
    u = torch.linspace(0.05, 0.95, n, dtype=torch.float64)
    return torch.exp(math.log(s.t_min) + u * (math.log(s.t_max) - math.log(s.t_min)))


def noisy(s, mixture, t, g):
    """x_t = alpha x0 + sigma eps with x0 drawn from the mixture; one row per time."""
    x0 = mixture.sample(len(t), g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return expand_like(s.alpha(t), x0) * x0 + expand_like(s.sigma(t), x0) * eps


def mixture_log_density(mixture, s, t, x):
    """log p_t(x) of the noisy marginal sum_k w_k N(alpha mu_k, alpha^2 C_k + sigma^2 I), written
    with torch.distributions (independent of GMMDenoiser)."""
    out = []
    for b in range(x.shape[0]):
        a, sg = s.alpha(t[b]), s.sigma(t[b])
        eye = torch.eye(mixture.dim, dtype=torch.float64)
        comps = [torch.distributions.MultivariateNormal(a * mixture.means[k],
                                                        a**2 * mixture.covs[k] + sg**2 * eye)
                 for k in range(len(mixture.weights))]
        lp = torch.stack([c.log_prob(x[b]) for c in comps]) + mixture.weights.log()
        out.append(torch.logsumexp(lp, 0))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# exact posterior mean
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_single_gaussian_closed_form(name):
    """K = 1: E[x0 | x_t] = mu + alpha C (alpha^2 C + sigma^2 I)^-1 (x - alpha mu)."""
    g = torch.Generator().manual_seed(10)
    d = 5
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    C = random_spd(d, g)
    mix = GaussianMixture([1.0], mu[None], C[None])
    s = make_schedule(name)
    den = GMMDenoiser(mix, s)
    t = times(s)
    x = noisy(s, mix, t, g)
    got = den(x, t)
    eye = torch.eye(d, dtype=torch.float64)
    for b in range(len(t)):
        a, sg = s.alpha(t[b]), s.sigma(t[b])
        want = mu + a * C @ torch.linalg.solve(a**2 * C + sg**2 * eye, x[b] - a * mu)
        err = (got[b] - want).abs().max().item()
        assert err < 1e-10 * (1 + want.abs().max().item()), f"{name}, t={t[b]:.4g}: {err:.3e}"


@pytest.mark.parametrize("name", ("edm", "vp-linear", "rf"))
def test_two_component_1d_quadrature(name):
    """K = 2, d = 1: E[x0 | x_t] by numerical quadrature of x0 p(x0) N(x_t; alpha x0, sigma^2)."""
    w, mu, sd = np.array([0.3, 0.7]), np.array([-1.2, 0.9]), np.array([0.25, 0.5])
    mix = GaussianMixture(w, mu[:, None], (sd**2)[:, None, None])
    s = make_schedule(name)
    den = GMMDenoiser(mix, s)
    # times with sigma/alpha in [0.05, 20] so the integrand is resolved by the grid below
    r = torch.tensor([0.05, 0.2, 0.6, 1.0, 2.0, 5.0, 20.0], dtype=torch.float64)
    t = s.t_from_ratio(r)
    xs = torch.tensor([-2.0, -0.5, 0.1, 0.7, 1.9, -1.1, 3.0], dtype=torch.float64)
    x = (s.alpha(t) * xs)[:, None]          # points in the bulk of p_t
    got = den(x, t)[:, 0].numpy()

    z = np.linspace(-8.0, 8.0, 400_001)     # x0 quadrature nodes
    logp0 = np.logaddexp.reduce(
        np.log(w)[:, None] - 0.5 * ((z[None] - mu[:, None]) / sd[:, None]) ** 2
        - np.log(sd)[:, None], axis=0)
    for b in range(len(t)):
        a, sg = float(s.alpha(t[b])), float(s.sigma(t[b]))
        logk = logp0 - 0.5 * ((float(x[b, 0]) - a * z) / sg) ** 2
        k = np.exp(logk - logk.max())
        want = np.trapezoid(z * k, z) / np.trapezoid(k, z)
        assert abs(got[b] - want) < 1e-9, f"{name}, ratio={float(r[b])}: {got[b]} vs {want}"


@pytest.mark.parametrize("name", ("edm", "vp-linear", "rf"))
def test_tweedie_eps_is_scaled_score(name):
    """eps_hat = (x - alpha D(x, t)) / sigma = -sigma grad_x log p_t(x) (Tweedie)."""
    g = torch.Generator().manual_seed(11)
    d, K = 4, 3
    mix = GaussianMixture(torch.rand(K, generator=g, dtype=torch.float64) + 0.2,
                          2.0 * torch.randn(K, d, generator=g, dtype=torch.float64),
                          torch.stack([random_spd(d, g) for _ in range(K)]))
    s = make_schedule(name)
    for mixture, dd in ((mix, d), (gmm2d_mixture(), 2)):
        den = GMMDenoiser(mixture, s)
        t = times(s, 6)
        x = noisy(s, mixture, t, g).requires_grad_(True)
        (score,) = torch.autograd.grad(mixture_log_density(mixture, s, t, x).sum(), x)
        x = x.detach()
        a, sg = (expand_like(c, x) for c in (s.alpha(t), s.sigma(t)))
        eps_hat = eps_from_x0(x, den(x, t), a, sg)
        err = ((eps_hat + sg * score).abs() / (1 + eps_hat.abs())).max().item()
        assert err < 1e-9, f"{name}, d={dd}: Tweedie mismatch {err:.3e}"


def test_denoiser_any_data_shape_and_dtype():
    den = load_model("gmm64")
    g = torch.Generator().manual_seed(3)
    x = 5.0 * torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0.01, 0.5, 3.0, 40.0], dtype=torch.float64)
    out = den(x, t)
    assert out.shape == x.shape and out.dtype == torch.float64
    flat = GMMDenoiser(den.mixture, den.schedule)(x.reshape(4, 64), t)
    assert torch.equal(out.reshape(4, 64), flat)
    out32 = den(x.float(), t)
    assert out32.dtype == torch.float32
    assert (out32.double() - out).abs().max().item() < 1e-3
    # a scalar time broadcasts to the batch
    assert torch.allclose(den(x, torch.tensor(0.5)), den(x, torch.full((4,), 0.5)), rtol=0, atol=0)


def test_denoiser_limits():
    """At small noise D(x) ~ x / alpha; at huge noise D(x) -> the mixture mean."""
    den = load_model("gmm2d")
    x = torch.tensor([[0.3, -0.2], [1.5, 0.8]], dtype=torch.float64)
    out = den(x, torch.full((2,), 1e-6))
    assert (out - x).abs().max().item() < 1e-9
    out = den(torch.zeros(2, 2, dtype=torch.float64), torch.full((2,), 1e6))
    assert (out - den.mixture.mean()).abs().max().item() < 1e-9


# ---------------------------------------------------------------------------------------------
# exact samples
# ---------------------------------------------------------------------------------------------

def independent_moments(mixture):
    w, mu, C = mixture.weights.numpy(), mixture.means.numpy(), mixture.covs.numpy()
    m = (w[:, None] * mu).sum(0)
    second = sum(w[k] * (C[k] + np.outer(mu[k], mu[k])) for k in range(len(w)))
    return m, second - np.outer(m, m)


@pytest.mark.parametrize("model,n", (("gmm2d", 400_000), ("gmm64", 100_000)))
def test_exact_samples_moments(model, n):
    den = load_model(model)
    m, cov = independent_moments(den.mixture)
    assert np.allclose(den.mixture.mean().numpy(), m, rtol=0, atol=1e-13)
    assert np.allclose(den.mixture.covariance().numpy(), cov, rtol=0, atol=1e-12)
    x = den.exact_samples(n, seed=0)
    assert x.shape == (n,) + den.data_shape and x.dtype == torch.float64
    x = x.reshape(n, -1).numpy()
    sd = np.sqrt(np.diag(cov))
    # 6 standard errors per coordinate for the mean; covariance entries scaled by sd_i sd_j
    z_mean = np.abs(x.mean(0) - m) / (sd / math.sqrt(n))
    assert z_mean.max() < 6.0, f"mean off by {z_mean.max():.2f} standard errors"
    emp = np.cov(x, rowvar=False)
    rel = np.abs(emp - cov) / np.outer(sd, sd)
    # observed max over entries: 1.6 (gmm2d) and 3.9 (gmm64) in these units
    assert rel.max() * math.sqrt(n) < 10.0, f"covariance off by {rel.max():.4f} (scaled)"
    # reproducible from the seed, different across seeds
    assert torch.equal(den.exact_samples(5, seed=1), den.exact_samples(5, seed=1))
    assert not torch.equal(den.exact_samples(5, seed=1), den.exact_samples(5, seed=2))


# ---------------------------------------------------------------------------------------------
# gmm64
# ---------------------------------------------------------------------------------------------

def test_gmm64_structure():
    den = load_model("gmm64")
    mix = den.mixture
    assert den.data_shape == (1, 8, 8) and den.schedule.name == "edm"
    assert mix.means.shape == (10, 64) and mix.covs.shape == (10, 64, 64)
    assert mix.weights.shape == (10,) and (mix.weights > 0).all()
    assert float(mix.weights.sum()) == pytest.approx(1.0, abs=1e-14)
    assert torch.allclose(mix.covs, mix.covs.transpose(1, 2), rtol=0, atol=0)
    eig = torch.linalg.eigvalsh(mix.covs)
    # empirical class covariance + 0.05 I: PD with smallest eigenvalue >= 0.05
    assert eig.min().item() >= 0.05 - 1e-10
    for k in range(10):
        torch.linalg.cholesky(mix.covs[k])      # raises if not PD
    # digits data in [-1, 1]: class means inside the box
    assert mix.means.abs().max().item() <= 1.0
    for suffix, sched in (("-vp", "vp-linear"), ("-rf", "rf")):
        other = load_model("gmm64" + suffix)
        assert other.schedule.name == sched and other.data_shape == (1, 8, 8)
        assert torch.equal(other.mixture.means, mix.means)


# ---------------------------------------------------------------------------------------------
# gmm:PATH.json
# ---------------------------------------------------------------------------------------------

def write(tmp_path, spec, name="m.json"):
    p = tmp_path / name
    p.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return f"gmm:{p}"


VALID = {"weights": [1.0, 3.0], "means": [[0.0, 1.0], [2.0, -1.0]], "stds": [0.5, 0.25]}


def test_json_stds(tmp_path):
    den = load_model(write(tmp_path, VALID))
    assert isinstance(den, GMMDenoiser)
    assert den.schedule.name == "edm" and den.data_shape == (2,)
    assert den.t_min == 0.002 and den.t_max == 80.0
    assert torch.allclose(den.mixture.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    want = torch.stack([0.25 * torch.eye(2), 0.0625 * torch.eye(2)]).double()
    assert torch.equal(den.mixture.covs, want)
    # the loaded model is the same denoiser as one built directly
    direct = GMMDenoiser(GaussianMixture([0.25, 0.75], VALID["means"], want), make_schedule("edm"))
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    assert torch.allclose(den(x, t), direct(x, t), rtol=0, atol=1e-15)


def test_json_covs_and_schedule(tmp_path):
    spec = {"weights": [0.5, 0.5], "means": [[0.0, 0.0], [1.0, 1.0]],
            "covs": [[[1.0, 0.3], [0.3, 0.5]], [[0.2, 0.0], [0.0, 0.2]]],
            "schedule": "vp-linear", "t_min": 0.01, "t_max": 0.9}
    den = load_model(write(tmp_path, spec))
    assert den.schedule.name == "vp-linear"
    assert den.t_min == 0.01 and den.t_max == 0.9
    assert torch.equal(den.mixture.covs, torch.tensor(spec["covs"], dtype=torch.float64))


def test_json_rf_t_min_and_data_shape(tmp_path):
    spec = {"weights": [1.0], "means": [[0.0] * 4], "stds": [1.0], "schedule": "rf",
            "t_min": 0.01, "data_shape": [1, 2, 2]}
    den = load_model(write(tmp_path, spec))
    assert den.schedule.name == "rf" and den.data_shape == (1, 2, 2)
    assert den.t_min == pytest.approx(0.01, rel=1e-12) and den.t_max == 1.0


BAD = [
    ({"means": [[0.0]], "stds": [1.0]}, "weights"),
    ({"weights": [1.0, 1.0], "means": [[0.0, 0.0]], "stds": [1.0, 1.0]}, "means"),
    ({"weights": [1.0], "means": [0.0, 1.0], "stds": [1.0]}, "means"),
    ({"weights": [1.0], "means": [[0.0, 1.0]], "stds": [1.0, 2.0]}, "stds"),
    ({"weights": [1.0], "means": [[0.0, 1.0]], "stds": [-1.0]}, "stds"),
    ({"weights": [1.0], "means": [[0.0, 1.0]], "covs": [[1.0, 0.0], [0.0, 1.0]]}, "covs"),
    ({"weights": [1.0], "means": [[0.0, 1.0]], "covs": [[[1.0, 2.0], [2.0, 1.0]]]}, "covs"),
    ({"weights": [1.0], "means": [[0.0, 1.0]], "covs": [[[0.0, 0.0], [0.0, 1.0]]]}, "covs"),
    ({"weights": [1.0], "means": [[0.0]]}, "stds|covs"),
    ({"weights": [1.0], "means": [[0.0]], "stds": [1.0], "covs": [[[1.0]]]}, "stds|covs"),
    ({"weights": [-1.0], "means": [[0.0]], "stds": [1.0]}, "weights"),
    ({"weights": [1.0], "means": [[0.0]], "stds": [1.0], "schedule": "cosine"}, "schedule"),
    ({"weights": [1.0], "means": [[0.0]], "stds": [1.0], "sched": "edm"}, "sched"),
    ({"weights": [1.0], "means": [[0.0]], "stds": [1.0], "data_shape": [3]}, "data_shape"),
    ({"weights": [1.0], "means": [[0.0]], "stds": [1.0], "schedule_params": {"beta": 1}},
     "beta"),
    ([1, 2, 3], "weights"),
]


@pytest.mark.parametrize("spec,field", BAD, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD)])
def test_json_malformed(tmp_path, spec, field):
    with pytest.raises(UserError) as exc:
        load_model(write(tmp_path, spec))
    assert field in str(exc.value), str(exc.value)


def test_json_unknown_schedule_lists_choices(tmp_path):
    spec = {"weights": [1.0], "means": [[0.0]], "stds": [1.0], "schedule": "cosine"}
    with pytest.raises(UserError) as exc:
        load_model(write(tmp_path, spec))
    msg = str(exc.value)
    assert "cosine" in msg and all(n in msg for n in ("edm", "rf", "vp-linear", "vp-cosine"))


def test_json_bad_syntax_and_missing_file(tmp_path):
    with pytest.raises(UserError) as exc:
        load_model(write(tmp_path, '{"weights": [1.0], "means": [[0.0]],', name="broken.json"))
    assert "broken.json" in str(exc.value) and "JSON" in str(exc.value)
    with pytest.raises(UserError, match="not found"):
        load_model(f"gmm:{tmp_path / 'absent.json'}")


def test_unknown_model_lists_choices():
    with pytest.raises(UserError) as exc:
        load_model("gmm65")
    msg = str(exc.value)
    assert "gmm65" in msg and "gmm64" in msg and "gmm2d" in msg and "gmm:PATH.json" in msg
