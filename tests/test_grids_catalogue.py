"""The issue-16 grid catalogue: sgm_uniform, simple, ddim_uniform, beta, kl_optimal,
linear_quadratic, ays, leading, trailing.

Validity on edm, vp-linear and rf (counts, float64, strict decrease, ends, the step into 0), known
values (the formulas written out again here, the published AYS tables, Beta quantiles), and the
peers: k-diffusion's ``get_sigmas_vp`` (sgm_uniform), diffusers' ``timestep_spacing``
(leading / trailing) and ComfyUI's timestep formulas on a diffusers-style discrete schedule, to
1e-12.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samplerbench.models.adapters import DiscreteVPSchedule
from samplerbench.models.errors import UserError
from samplerbench.models.schedules import make_schedule
from samplerbench.solvers.grids import ays_table, make_grid

SCHEDULES = ["edm", "vp-linear", "rf"]
NEW = ["sgm_uniform", "simple", "ddim_uniform", "beta", "kl_optimal", "linear_quadratic", "ays",
       "leading", "trailing"]
# grids placed in the ratio sigma/alpha start at the schedule's finite sigma_max (t = 80/81 on rf)
RATIO_START = {"kl_optimal"}
# where each grid starts: t_max, the ratio start, or inside (leading, ddim_uniform, ays tables)
STARTS_AT_T_MAX = {"sgm_uniform", "simple", "beta", "linear_quadratic", "trailing"}
ENDS_AT_T_MIN = {"kl_optimal", "leading"}
N = 1000


def _sd_alphas_cumprod(n=N):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def _ratio_start(s):
    return float(s.t_from_ratio(s.sigma_max))


# ------------------------------------------------------------------------------------------------
# validity
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sched", SCHEDULES)
@pytest.mark.parametrize("name", NEW)
def test_catalogue_grids_are_valid(sched, name):
    s = make_schedule(sched)
    for final in ("zero", "t_min"):
        for steps in (1, 2, 3, 10, 37):
            g = make_grid(name, s, steps, final=final)
            t = g.t
            assert t.dtype == torch.float64 and t.ndim == 1, (name, sched)
            assert t.numel() == steps + 1 and g.steps == steps and g.final == final
            assert (t[1:] < t[:-1]).all(), (name, sched, final, steps, t.tolist())
            assert torch.isfinite(t).all() and float(t[0]) <= s.t_max
            pos = t[:-1] if final == "zero" else t
            assert (pos >= s.t_min).all() and (pos > 0).all()
            if final == "zero":
                assert float(t[-1]) == 0.0 and g.t_end == float(t[-2])
            if name in STARTS_AT_T_MAX:
                assert g.t_start == s.t_max, (name, sched)
            if name in RATIO_START:
                assert g.t_start == pytest.approx(_ratio_start(s), rel=1e-14)
            if name in ENDS_AT_T_MIN and steps >= 2:
                assert g.t_end == s.t_min, (name, sched, g.t_end)


@pytest.mark.parametrize("name", NEW)
def test_recorded_params_rebuild_the_grid(name):
    """grid.params is what the harness records and what a strong reference rebuilds from."""
    s = make_schedule("vp-linear")
    g = make_grid(name, s, 12)
    assert torch.equal(make_grid(name, s, 12, **g.params).t, g.t)
    assert g.params.get("num_train_timesteps", 1000) is not None     # resolved, not "default"


def test_list_grids_shows_the_catalogue(capsys):
    from samplerbench.bench.cli import main

    assert main(["list", "grids"]) == 0
    out = capsys.readouterr().out
    for name in NEW:
        assert f"\n{name} " in out, name
    assert "sd15|sdxl|svd" in out and "alpha=0.6" in out and "threshold_noise=0.025" in out


# ------------------------------------------------------------------------------------------------
# sgm_uniform
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sched", SCHEDULES)
def test_sgm_uniform_is_uniform_without_its_last_point(sched):
    s = make_schedule(sched)
    for n in (1, 5, 18):
        g = make_grid("sgm_uniform", s, n).t
        u = make_grid("uniform", s, n + 1).t           # n + 1 points t_max..t_min, then 0
        torch.testing.assert_close(g[:-1], u[:-2], rtol=1e-15, atol=0)
        assert float(g[-2]) == pytest.approx(s.t_min + (s.t_max - s.t_min) / n, rel=1e-13)


def test_sgm_uniform_matches_kdiffusion_get_sigmas_vp():
    """k-diffusion's continuous VP schedule (beta_d = 19.9, beta_min = 0.1, eps_s = 1e-3) is our
    vp-linear; ``get_sigmas_vp(n + 1)`` without its last positive point is sgm_uniform."""
    from helpers import load_kdiffusion_sampling

    K = load_kdiffusion_sampling("_kdiffusion_grid_peer")
    if K is None:
        pytest.skip("k-diffusion's sampling module is not loadable")
    s = make_schedule("vp-linear")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)          # get_sigmas_vp builds its ramp in the default
    try:
        for n in (4, 10, 25):
            ref = K.get_sigmas_vp(n + 1)
            ref = torch.cat([ref[:-2], ref[-1:]])
            sig = s.ratio(make_grid("sgm_uniform", s, n).t)
            torch.testing.assert_close(sig[:-1], ref[:-1], rtol=1e-12, atol=0)
            assert float(ref[-1]) == 0.0
    finally:
        torch.set_default_dtype(old)


# ------------------------------------------------------------------------------------------------
# discrete-timestep grids: ComfyUI's formulas and diffusers' spacings
# ------------------------------------------------------------------------------------------------

def _comfy_simple(n, N=N):
    return [N - 1 - int(i * (N / n)) for i in range(n)]


def _comfy_ddim_uniform(n, N=N):
    ss = max(N // n, 1)
    return sorted(range(1, N, ss), reverse=True)       # ComfyUI walks x = 1, 1 + ss, ... < N


@pytest.mark.parametrize("n", [1, 4, 10, 25, 30, 50, 999])
def test_simple_and_ddim_uniform_are_comfyui_timesteps_on_a_diffusers_schedule(n):
    s = DiscreteVPSchedule(_sd_alphas_cumprod())
    sig_table = ((1 - s.alphas_cumprod) / s.alphas_cumprod).sqrt()
    g = make_grid("simple", s, n)
    k = _comfy_simple(n)
    want = torch.tensor([(kk + 1) / N for kk in k], dtype=torch.float64)
    torch.testing.assert_close(g.t[:-1], want, rtol=1e-14, atol=0)
    torch.testing.assert_close(s.ratio(g.t[:-1]), sig_table[k], rtol=1e-12, atol=0)
    g = make_grid("ddim_uniform", s, n)
    k = _comfy_ddim_uniform(n)
    k = k[len(k) - n:]                                  # ComfyUI may hold one more (module doc)
    torch.testing.assert_close(g.t[:-1], torch.tensor([(kk + 1) / N for kk in k],
                                                      dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(s.ratio(g.t[:-1]), sig_table[k], rtol=1e-12, atol=0)


def test_comfyui_ddim_uniform_extra_point_is_dropped():
    assert len(_comfy_ddim_uniform(30)) == 31 and len(_comfy_ddim_uniform(10)) == 10
    g = make_grid("ddim_uniform", make_schedule("vp-linear"), 30)
    assert g.steps == 30 and float(g.t[0]) == pytest.approx((958 + 1) / N, rel=1e-14)


def test_ddim_uniform_is_leading_with_offset_one():
    s = make_schedule("edm")
    for n in (3, 10, 30):
        torch.testing.assert_close(make_grid("ddim_uniform", s, n).t,
                                   make_grid("leading", s, n, steps_offset=1).t, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")      # diffusers on numpy 2
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("n", [1, 7, 10, 25, 30, 50])
def test_leading_trailing_match_diffusers(spacing, n):
    """diffusers' DDIMScheduler / EulerDiscreteScheduler timesteps k land at t = (k + 1)/N on a
    diffusers model and on vp-linear (t_min = 1/N, t_max = 1)."""
    diffusers = pytest.importorskip("diffusers")
    offsets = (0, 1) if spacing == "leading" else (0,)
    for offset in offsets:
        for cls in (diffusers.DDIMScheduler, diffusers.EulerDiscreteScheduler):
            sch = cls(num_train_timesteps=N, timestep_spacing=spacing, steps_offset=offset)
            sch.set_timesteps(n)
            k = torch.as_tensor(sch.timesteps, dtype=torch.float64)
            want = (k + 1) / N
            params = {"steps_offset": offset} if spacing == "leading" else {}
            for s in (DiscreteVPSchedule(_sd_alphas_cumprod()), make_schedule("vp-linear")):
                g = make_grid(spacing, s, n, **params)
                torch.testing.assert_close(g.t[:-1], want, rtol=1e-14, atol=0,
                                           msg=f"{cls.__name__} {spacing} {n} {offset}")


def test_discrete_grids_map_timesteps_affinely_on_other_schedules():
    """t_k = t_min + (t_max - t_min) k / (N - 1): trailing starts at t_max, leading ends at t_min."""
    for sched in ("edm", "rf"):
        s = make_schedule(sched)
        g = make_grid("trailing", s, 10).t
        assert float(g[0]) == s.t_max
        assert float(g[-2]) == pytest.approx(s.t_min + (s.t_max - s.t_min) * 99 / 999, rel=1e-14)
        g = make_grid("leading", s, 10).t
        assert float(g[-2]) == s.t_min
        assert float(g[0]) == pytest.approx(s.t_min + (s.t_max - s.t_min) * 900 / 999, rel=1e-14)


def test_num_train_timesteps_follows_the_schedule():
    s = DiscreteVPSchedule(_sd_alphas_cumprod(200))
    g = make_grid("trailing", s, 8)
    assert g.params["num_train_timesteps"] == 200
    assert float(g.t[1]) == pytest.approx((round(200 - 200 / 8) - 1 + 1) / 200, rel=1e-14)
    g = make_grid("simple", make_schedule("edm"), 8, num_train_timesteps=100)
    assert g.params["num_train_timesteps"] == 100


# ------------------------------------------------------------------------------------------------
# beta
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sched", SCHEDULES)
def test_beta_points_are_beta_quantiles(sched):
    from scipy.special import betainc

    s = make_schedule(sched)
    n = 12
    t = make_grid("beta", s, n).t[:-1]
    u = ((t - s.t_min) / (s.t_max - s.t_min)).numpy()
    q = 1.0 - np.arange(n) / n
    np.testing.assert_allclose(betainc(0.6, 0.6, u), q, rtol=1e-12, atol=1e-13)


def test_beta_known_quantiles():
    s = make_schedule("vp-linear")
    span = s.t_max - s.t_min
    n = 9
    q = torch.tensor(1.0 - np.arange(n) / n, dtype=torch.float64)
    # Beta(1/2, 1/2) is the arcsine law: F^{-1}(q) = sin^2(pi q / 2)
    g = make_grid("beta", s, n, alpha=0.5, beta=0.5)
    torch.testing.assert_close(g.t[:-1], s.t_min + span * torch.sin(math.pi * q / 2) ** 2,
                               rtol=1e-12, atol=0)
    assert g.params == {"alpha": 0.5, "beta": 0.5}
    # Beta(1, 1) is uniform
    g = make_grid("beta", s, n, alpha=1.0, beta=1.0)
    torch.testing.assert_close(g.t[:-1], s.t_min + span * q, rtol=1e-12, atol=0)
    # Beta(2, 1): F(u) = u^2
    g = make_grid("beta", s, n, alpha=2.0, beta=1.0)
    torch.testing.assert_close(g.t[:-1], s.t_min + span * q.sqrt(), rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------------
# kl_optimal
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sched", SCHEDULES)
def test_kl_optimal_is_uniform_in_arctan_sigma(sched):
    s = make_schedule(sched)
    for final in ("zero", "t_min"):
        g = make_grid("kl_optimal", s, 14, final=final)
        t = g.t[:-1] if final == "zero" else g.t
        sig = s.ratio(t)
        assert float(sig[0]) == pytest.approx(s.sigma_max, rel=1e-12)
        assert float(sig[-1]) == pytest.approx(s.sigma_min, rel=1e-12)
        a = torch.atan(sig)
        d = a[:-1] - a[1:]
        torch.testing.assert_close(d, d.mean().expand_as(d), rtol=1e-10, atol=0)


def test_kl_optimal_edm_formula():
    n, smin, smax = 10, 0.002, 80.0
    w = torch.arange(n, dtype=torch.float64) / (n - 1)
    want = torch.tan(w * math.atan(smin) + (1 - w) * math.atan(smax))
    g = make_grid("kl_optimal", make_schedule("edm"), n)
    torch.testing.assert_close(g.t[:-1], want, rtol=1e-13, atol=0)
    assert float(g.t[0]) == 80.0 and float(g.t[-2]) == 0.002
    # the second point is already far down: tan(atan(80) - (atan(80) - atan(0.002)) / 9)
    assert float(g.t[1]) == pytest.approx(math.tan(math.atan(80) - (math.atan(80) -
                                                                    math.atan(0.002)) / 9), rel=1e-13)


# ------------------------------------------------------------------------------------------------
# linear_quadratic
# ------------------------------------------------------------------------------------------------

def _mochi(n, thr, L):
    """The Mochi schedule in its published polynomial form (1 - v), v quadratic after L steps."""
    diff = L - thr * n
    Q = n - L
    qc = diff / (L * Q**2)
    lc = thr / L - 2 * diff / Q**2
    const = qc * L**2
    v = [i * thr / L for i in range(L)] + [qc * i**2 + lc * i + const for i in range(L, n)]
    return [1.0 - x for x in v]


@pytest.mark.parametrize("n,thr,L", [(10, 0.025, None), (8, 0.025, None), (30, 0.05, 20),
                                     (2, 0.025, None), (5, 0.1, 1)])
def test_linear_quadratic_is_the_mochi_schedule(n, thr, L):
    params = {"threshold_noise": thr} | ({"linear_steps": L} if L is not None else {})
    for sched in ("rf", "edm"):
        s = make_schedule(sched)
        g = make_grid("linear_quadratic", s, n, **params)
        want = torch.tensor(_mochi(n, thr, L if L is not None else n // 2), dtype=torch.float64)
        torch.testing.assert_close(g.t[:-1], s.t_max * want, rtol=1e-12, atol=0)
        assert g.params["threshold_noise"] == thr and g.params["linear_steps"] == L


def test_linear_quadratic_shape():
    s = make_schedule("rf")
    t = make_grid("linear_quadratic", s, 10).t[:-1]
    d = t[:-1] - t[1:]
    torch.testing.assert_close(d[:5], torch.full((5,), 0.025 / 5, dtype=torch.float64),
                               rtol=1e-12, atol=0)     # linear part: threshold over n // 2 steps
    assert (d[5:] > d[4]).all()                         # then faster (quadratic)
    # the quadratic reaches 0 at the denoise step: the next point would be t = 0
    dd = d[5:][1:] - d[5:][:-1]
    torch.testing.assert_close(dd, dd.mean().expand_as(dd), rtol=1e-9, atol=0)


# ------------------------------------------------------------------------------------------------
# ays
# ------------------------------------------------------------------------------------------------

COMFY_AYS = {   # ComfyUI's AlignYourStepsScheduler tables (10 decimals)
    "sd15": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
             0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "sdxl": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "svd": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


@pytest.mark.parametrize("model", ["sd15", "sdxl", "svd"])
def test_ays_tables_are_the_published_ones(model):
    torch.testing.assert_close(ays_table(model), torch.tensor(COMFY_AYS[model], dtype=torch.float64),
                               rtol=0, atol=6e-11)


@pytest.mark.parametrize("sched", SCHEDULES)
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_ays_10_steps_is_the_table(sched, model):
    """Inside the schedule's range the 10-step grid (11 points) is the published table."""
    s = make_schedule(sched)
    table = ays_table(model)
    g = make_grid("ays", s, 10, final="t_min", model=model)
    torch.testing.assert_close(s.ratio(g.t), table, rtol=1e-12, atol=0)
    g = make_grid("ays", s, 11, model=model)            # the same points, then the denoise step
    torch.testing.assert_close(s.ratio(g.t[:-1]), table, rtol=1e-12, atol=0)
    assert g.params == {"model": model}


def test_ays_svd_inside_a_wide_edm_range_and_clipped_to_edm():
    table = ays_table("svd")
    wide = make_schedule("edm", t_max=800.0)
    g = make_grid("ays", wide, 10, final="t_min", model="svd")
    torch.testing.assert_close(g.t, table, rtol=1e-12, atol=0)
    # on EDM (sigma_max = 80) the curve is cut where it crosses 80, then resampled uniformly
    s = make_schedule("edm")
    g = make_grid("ays", s, 10, final="t_min", model="svd")
    assert float(g.t[0]) == 80.0 and float(g.t[-1]) == 0.002
    u_nodes = np.linspace(0, 1, 11)
    logs = np.log(table.numpy())
    u_cut = 0.1 * (logs[0] - math.log(80.0)) / (logs[0] - logs[1])
    want = np.exp(np.interp(np.linspace(u_cut, 1, 11), u_nodes, logs))   # u is increasing
    np.testing.assert_allclose(g.t.numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("steps", [4, 7, 20, 50])
def test_ays_is_nvidias_loglinear_interpolation(steps):
    """NVIDIA's loglinear_interp: log sigma linear in the table index, resampled uniformly.  Our
    final="t_min" grid at ``steps`` is that curve at steps + 1 points; ComfyUI's ``steps`` grid is
    the same curve with its last point replaced by 0."""
    s = make_schedule("edm")
    table = ays_table("sd15").numpy()
    xs = np.linspace(0, 1, len(table))
    ys = np.log(table[::-1])                            # increasing, as np.interp wants
    want = np.exp(np.interp(np.linspace(0, 1, steps + 1), xs, ys))[::-1]
    g = make_grid("ays", s, steps, final="t_min")
    np.testing.assert_allclose(g.t.numpy(), want, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,params,steps,match", [
    ("ays", {"model": "sd3"}, 10, "sd15"),
    ("beta", {"alpha": -1.0}, 10, "alpha"),
    ("beta", {"beta": "x"}, 10, "beta"),
    ("linear_quadratic", {"threshold_noise": 1.5}, 10, "threshold_noise"),
    ("linear_quadratic", {"linear_steps": 0}, 10, "linear_steps"),
    ("linear_quadratic", {"linear_steps": 2.5}, 10, "linear_steps"),
    ("simple", {"num_train_timesteps": 1}, 10, "num_train_timesteps"),
    ("trailing", {"num_train_timesteps": 100}, 101, "steps"),
    ("leading", {"steps_offset": -1}, 10, "steps_offset"),
    ("leading", {"num_train_timesteps": 100, "steps_offset": 5}, 100, "steps"),
    ("kl_optimal", {"rho": 7.0}, 10, "rho"),
])
def test_bad_catalogue_params(name, params, steps, match):
    with pytest.raises(UserError, match=match):
        make_grid(name, make_schedule("edm"), steps, **params)


def test_ays_outside_the_range_is_refused():
    s = make_schedule("edm", t_min=20.0)                # the SD table ends at 14.6 < 20
    with pytest.raises(UserError, match="range"):
        make_grid("ays", s, 10)
