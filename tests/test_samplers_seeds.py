"""Issue 16, item 1 leftovers: SEEDS (``seeds_2``, ``seeds_3``) and CFG++ (``euler_cfg_pp``,
``dpmpp_2m_cfg_pp``), float64.

* SEEDS against a re-derivation of ComfyUI's ``sample_seeds_2`` / ``sample_seeds_3`` written
  below in ComfyUI's own variables (sigma, half-logSNR lambda, alpha = sigma e^lambda) with the
  same injected draws, on EDM and VP models (ComfyUI's VE view: xbar = x/alpha, sigma/alpha) and a
  flow model (ComfyUI's CONST view: x itself, sigma = t, alpha = 1 - t); their eta = 0 limits
  (``dpmpp_2s``; DPM-Solver++(3S)) and ODE orders; moments on gmm2d with noise.
* CFG++ on digits-cond-rf against the published update computed from the two halves of the
  guided model; reductions to ``ddim`` / ``dpmpp_2m`` without guidance; NFE and forward passes.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from samplerbench.bench.conformance import ORDER_TOLERANCE
from samplerbench.models.dynamics import ProbabilityFlowODE
from samplerbench.models.guidance import guided
from samplerbench.models.zoo import load_model
from helpers import InjectedDraws, cached_model, rel_max
from samplerbench.solvers import get_solver, initial_noise, make_grid, make_noise

_REFS: dict = {}
_MODELS: dict = {}
_model = cached_model
_rel = rel_max
_Draws = InjectedDraws


# --- the ComfyUI update, re-derived ---------------------------------------------------------------

class _View:
    """ComfyUI's model(x, sigma) and its lambda(sigma), sigma(lambda) for one of our models:
    VE view (EDM, VP: xbar, sigmabar = sigma/alpha) or CONST view (flow: x, sigma = t)."""

    def __init__(self, den, const):
        self.den, self.sched, self.const, self.calls = den, den.schedule, const, 0

    def lam(self, s):
        return math.log((1 - s) / s) if self.const else -math.log(s)

    def sigma(self, lam_):
        return 1.0 / (1.0 + math.exp(lam_)) if self.const else math.exp(-lam_)

    def __call__(self, x, s):
        self.calls += 1
        t = torch.tensor(s, dtype=torch.float64)
        if self.const:
            return self.den(x, t.expand(x.shape[0]))
        t = self.sched.t_from_ratio(t)
        return self.den(float(self.sched.alpha(t)) * x, t.expand(x.shape[0]))


def _phi1(z):          # ComfyUI's ei_h_phi_1(z) = expm1(z)
    return math.expm1(z)


def _phi2(z):          # ComfyUI's ei_h_phi_2(z) = (expm1(z) - z) / z
    return (math.expm1(z) - z) / z


def seeds_comfy(model, x, sigmas, noise, eta, rs, solver_type="phi_1", s_noise=1.0):
    """ComfyUI's sample_seeds_2 (rs = (r,)) and sample_seeds_3 (rs = (r_1, r_2))."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = model(x, s)
        if s_next == 0:
            return d
        ls, lt = model.lam(s), model.lam(s_next)
        h = lt - ls
        he = h * (eta + 1)
        alpha = lambda lam_: model.sigma(lam_) * math.exp(lam_)          # noqa: E731
        inject = eta > 0 and s_noise > 0
        r1 = rs[0]
        l1 = ls + r1 * (lt - ls)
        sig1 = model.sigma(l1)
        x2 = sig1 / s * math.exp(-r1 * h * eta) * x - alpha(l1) * _phi1(-r1 * he) * d
        if inject:
            sde = math.sqrt(-math.expm1(-2 * r1 * h * eta)) * noise(s, sig1)
            x2 = x2 + sde * sig1 * s_noise
        d2 = model(x2, sig1)
        last_r, last_sig, last_d = r1, sig1, d2
        if len(rs) == 2:
            r2 = rs[1]
            l2 = ls + r2 * (lt - ls)
            sig2 = model.sigma(l2)
            a32 = r2 / r1 * _phi2(-r2 * he)
            a31 = _phi1(-r2 * he) - a32
            x3 = sig2 / s * math.exp(-r2 * h * eta) * x - alpha(l2) * (a31 * d + a32 * d2)
            if inject:
                seg = (r1 - r2) * h * eta
                sde = sde * math.exp(seg) + math.sqrt(-math.expm1(2 * seg)) * noise(sig1, sig2)
                x3 = x3 + sde * sig2 * s_noise
            last_r, last_sig, last_d = r2, sig2, model(x3, sig2)
        decay = s_next / s * math.exp(-h * eta)
        if len(rs) == 1 and solver_type == "phi_1":
            dd = d + (last_d - d) / (2 * r1)
            x = decay * x - alpha(lt) * _phi1(-he) * dd
        else:
            b2 = _phi2(-he) / last_r
            b1 = _phi1(-he) - b2
            x = decay * x - alpha(lt) * (b1 * d + b2 * last_d)
        if inject:
            seg = (last_r - 1) * h * eta
            sde = sde * math.exp(seg) + math.sqrt(-math.expm1(2 * seg)) * noise(last_sig, s_next)
            x = x + sde * s_next * s_noise
    return x


SEEDS_CASES = [("seeds_2", {}), ("seeds_2", {"solver_type": "phi_2"}),
               ("seeds_2", {"r": 1.0, "solver_type": "phi_2"}), ("seeds_3", {})]


@pytest.mark.parametrize("model_name", ["gmm64", "gmm64-vp", "gmm64-rf"])
@pytest.mark.parametrize("name,params", SEEDS_CASES)
@pytest.mark.parametrize("eta", [1.0, 0.4])
def test_seeds_is_comfyui_update(model_name, name, params, eta):
    den = _model(model_name)
    const = model_name.endswith("-rf")
    g = make_grid("karras", den.schedule, 8)
    x = float(den.schedule.sigma(g.t_start)) * initial_noise([0, 1, 2], den.data_shape)
    if const:
        sig, x_peer = g.t.tolist(), x
    else:
        sig = den.schedule.ratio(g.t).tolist()
        sig[-1] = 0.0
        x_peer = x / float(den.schedule.alpha(g.t_start))
    stages = 2 if name == "seeds_2" else 3
    rs = ((params.get("r", 0.5),) if name == "seeds_2" else (1 / 3, 2 / 3))
    peer = _View(den, const)
    ref = seeds_comfy(peer, x_peer, sig, _Draws(x.shape, 30), eta, rs,
                      params.get("solver_type", "phi_1"))
    solver = get_solver(name, eta=eta, **params)
    draws = _Draws(x.shape, 30)
    sol = solver.solve(solver.make_dynamics(den), x.clone(), g, draws)
    assert sol.status == "ok" and sol.nfe == peer.calls == solver.declared_nfe(g) == 7 * stages + 1
    assert draws.i == 7 * stages
    assert _rel(sol.x, ref) < 1e-8, _rel(sol.x, ref)


def _dpmpp_3s(dynamics, x, grid):
    """Data-prediction DPM-Solver-3 (dpm-solver's singlestep_dpm_solver_third_update,
    algorithm_type="dpmsolver++", solver_type="dpmsolver", r1 = 1/3, r2 = 2/3), t_min grid."""
    sched = dynamics.schedule
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    lam = lambda t: float(sched.log_snr(f64(t))) / 2  # noqa: E731
    t_of = lambda l: float(sched.t_from_log_snr(f64(2 * l)))  # noqa: E731
    a = lambda t: float(sched.alpha(f64(t)))  # noqa: E731
    s = lambda t: float(sched.sigma(f64(t)))  # noqa: E731
    ts = grid.t.tolist()
    for t0, t1 in zip(ts[:-1], ts[1:]):
        r1, r2 = 1 / 3, 2 / 3
        l0, l1 = lam(t0), lam(t1)
        h = l1 - l0
        ts1, ts2 = t_of(l0 + r1 * h), t_of(l0 + r2 * h)
        p11, p12, p1 = math.expm1(-r1 * h), math.expm1(-r2 * h), math.expm1(-h)
        p22 = p12 / (r2 * h) + 1
        p2 = p1 / h + 1
        m0 = dynamics.denoise(t0, x)
        x1 = s(ts1) / s(t0) * x - a(ts1) * p11 * m0
        m1 = dynamics.denoise(ts1, x1)
        x2 = s(ts2) / s(t0) * x - a(ts2) * p12 * m0 + r2 / r1 * a(ts2) * p22 * (m1 - m0)
        m2 = dynamics.denoise(ts2, x2)
        x = s(t1) / s(t0) * x - a(t1) * p1 * m0 + 1 / r2 * a(t1) * p2 * (m2 - m0)
    return x


def test_seeds_eta_zero_is_dpmpp_2s_and_dpmpp_3s():
    """eta = 0: no draws; seeds_2 (phi_1, r = 1/2) is dpmpp_2s, seeds_3 is DPM-Solver++(3S)."""
    den = _model("gmm64-vp")
    g = make_grid("karras", den.schedule, 10, final="t_min")
    x = float(den.schedule.sigma(g.t_start)) * initial_noise([0, 1], den.data_shape)
    draws = _Draws(x.shape, 1)
    s2, ref2 = get_solver("seeds_2", eta=0.0), get_solver("dpmpp_2s")
    a = s2.solve(s2.make_dynamics(den), x.clone(), g, draws).x
    b = ref2.solve(ref2.make_dynamics(den), x.clone(), g).x
    assert _rel(a, b) < 1e-13
    s3 = get_solver("seeds_3", eta=0.0)
    a = s3.solve(s3.make_dynamics(den), x.clone(), g, draws).x
    assert _rel(a, _dpmpp_3s(ProbabilityFlowODE(den), x.clone(), g)) < 1e-12
    assert draws.i == 0


def _ode_errors(name, steps_list, model="gmm64", **params):
    """err_rms at t_min against the dopri8 reference (the solver given unused fresh noise)."""
    from helpers import err_rms

    from samplerbench.solvers.classical.adaptive import reference_solve

    den = _model(model)
    seeds = [0, 1, 2, 3]
    if model not in _REFS:
        g0 = make_grid("karras", den.schedule, steps_list[0], final="t_min")
        x = float(den.schedule.sigma(g0.t_start)) * initial_noise(seeds, den.data_shape)
        _REFS[model] = x, reference_solve(ProbabilityFlowODE(den), x, g0, 1e-12, 1e-12).x
    x, ref = _REFS[model]
    solver = get_solver(name, **params)
    errs = []
    for n in steps_list:
        g = make_grid("karras", den.schedule, n, final="t_min")
        noise = make_noise("fresh", seeds, den.data_shape, g)
        errs.append(err_rms(solver.solve(solver.make_dynamics(den), x, g, noise).x, ref))
    return errs


@pytest.mark.parametrize("name,params,expect,steps", [
    ("seeds_2", {}, 2.0, [32, 64, 128]),
    ("seeds_2", {"solver_type": "phi_2"}, 2.0, [32, 64, 128]),
    ("seeds_3", {}, 3.0, [64, 128, 256]),     # local slopes 2.7, 2.9, 3.0 from 32 steps
])
def test_seeds_eta_zero_ode_order(name, params, expect, steps):
    from helpers import fit_order

    errs = _ode_errors(name, steps, eta=0.0, **params)
    order = fit_order(steps, errs)
    assert abs(order - expect) <= ORDER_TOLERANCE, (order, errs)


@pytest.mark.parametrize("name", ["seeds_2", "seeds_3"])
def test_seeds_keeps_the_distribution(name):
    """gmm2d, eta = 1 (the reverse SDE), 24 karras steps, 4000 samples: mean and second moments
    within 4 standard errors of the exact mixture's; with the noise switched off (s_noise = 0,
    the SDE's drift kept) the samples are far too narrow."""
    den = _model("gmm2d")
    mix = den.mixture
    seeds = list(range(4000))
    g = make_grid("karras", den.schedule, 24)
    x = float(den.schedule.sigma(g.t_start)) * initial_noise(seeds, den.data_shape)
    mean, cov = mix.mean(), mix.covariance()
    want = torch.cat([mean, (cov + torch.outer(mean, mean)).reshape(-1)])

    def z_score(s_noise):
        solver = get_solver(name, s_noise=s_noise)
        out = solver.solve(solver.make_dynamics(den), x, g,
                           make_noise("fresh", seeds, den.data_shape, g)).x
        feats = torch.cat([out, (out[:, :, None] * out[:, None, :]).reshape(len(out), -1)], 1)
        se = feats.std(0) / math.sqrt(len(out))
        return ((feats.mean(0) - want) / se).abs().max().item()

    assert z_score(1.0) < 4.0
    assert z_score(0.0) > 10.0


def test_seeds_from_alpha_zero_and_bad_options():
    """From t = 1 on a flow model the first step is the first-order SDE step (1 NFE):
    alpha_1 x0_hat + sigma_1 z for eta = 1."""
    from samplerbench.models.errors import UserError

    den = _model("gmm64-rf")
    g = make_grid("uniform", den.schedule, 4, final="t_min")
    x = initial_noise([0, 1], den.data_shape)
    for name in ("seeds_2", "seeds_3"):
        solver = get_solver(name)
        draws = _Draws(x.shape, 20)
        g1 = make_grid("uniform", den.schedule, 1, final="t_min")
        sol = solver.solve(solver.make_dynamics(den), x.clone(), g1, draws)
        a1, s1 = float(den.schedule.alpha(g1.t[1])), float(den.schedule.sigma(g1.t[1]))
        want = a1 * den(x, g1.t[0].expand(2)) + s1 * draws.z[0]
        assert sol.nfe == 1 and _rel(sol.x, want) < 1e-13
        assert solver.solve(solver.make_dynamics(den), x, g, _Draws(x.shape, 20)).status == "ok"
    for name, bad in [("seeds_2", {"eta": -1.0}), ("seeds_2", {"r": 0.0}),
                      ("seeds_2", {"solver_type": "phi_3"}), ("seeds_3", {"r_1": 0.7}),
                      ("seeds_3", {"s_noise": float("nan")})]:
        with pytest.raises(UserError, match=name):
            get_solver(name, **bad)


# --- CFG++ --------------------------------------------------------------------------------------

def _cond_model():
    """digits-cond-rf in float64 (a copy: the zoo caches the float32 model)."""
    if "cond64" not in _MODELS:
        _MODELS["cond64"] = copy.deepcopy(load_model("digits-cond-rf")).double()
    return _MODELS["cond64"]


def cfg_pp_peer(den, x, grid, y, lam_, multistep):
    """CFG++ (Chung et al. 2024) from the two halves: x0^lam = x0_u + lam (x0_c - x0_u);
    ComfyUI's euler_cfg_pp / dpmpp_2m_cfg_pp in xbar = x/alpha, sigmabar = sigma/alpha."""
    sched = den.schedule
    null = torch.full_like(y, den.num_classes)
    ts = grid.t.tolist()
    a = [float(sched.alpha(torch.tensor(t, dtype=torch.float64))) for t in ts]
    sig = [float(sched.ratio(torch.tensor(t, dtype=torch.float64))) if t > 0 else 0.0 for t in ts]
    xb, old_u, calls = x / a[0], None, 0
    for i in range(len(ts) - 1):
        tt = torch.full((x.shape[0],), ts[i], dtype=torch.float64)
        xt = a[i] * xb
        x0_c, x0_u = den(xt, tt, y=y), den(xt, tt, y=null)
        calls += 1
        den_g = x0_u + lam_ * (x0_c - x0_u)
        if sig[i + 1] == 0:
            return den_g, calls
        h = math.log(sig[i]) - math.log(sig[i + 1])
        if not multistep:
            xb = den_g + sig[i + 1] * (xb - x0_u) / sig[i]
            continue
        if old_u is None:
            mix = -math.exp(-h) * x0_u
        else:
            r = (math.log(sig[i - 1]) - math.log(sig[i])) / h
            mix = -math.exp(-h) * x0_u - math.expm1(-h) / (2 * r) * (den_g - old_u)
        xb = den_g + mix + math.exp(-h) * xb
        old_u = x0_u
    return a[-1] * xb, calls


@pytest.mark.parametrize("name", ["euler_cfg_pp", "dpmpp_2m_cfg_pp"])
@pytest.mark.parametrize("w", [-0.4, 0.0, 1.5])
@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_cfg_pp_is_the_published_update(name, w, final):
    den = _cond_model()
    y = torch.tensor([3, 7, 0])
    g = make_grid("karras", den.schedule, 6, final=final)
    x = float(den.schedule.sigma(g.t_start)) * initial_noise([0, 1, 2], den.data_shape)
    ref, calls = cfg_pp_peer(den, x, g, y, 1.0 + w, name.startswith("dpmpp"))
    solver = get_solver(name, lower_order_final=False) if name.startswith("dpmpp") \
        else get_solver(name)
    sol = solver.solve(solver.make_dynamics(guided(den, w), cond={"y": y}), x.clone(), g)
    assert sol.nfe == calls == solver.declared_nfe(g)
    # every step evaluates both halves (also at w = 0); the denoise step only what it needs
    passes = 2 * sol.nfe if final == "t_min" or w != 0 else 2 * (sol.nfe - 1) + 1
    assert sol.forward_passes == passes
    assert _rel(sol.x, ref) < 1e-10, _rel(sol.x, ref)


@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_cfg_pp_without_guidance_is_ddim_and_dpmpp_2m(final):
    """An unconditional model: bit for bit.  w = -1 (lambda = 0, the unconditional half only):
    the unconditional model's ddim / dpmpp_2m to rounding."""
    den = _model("gmm64-vp")
    g = make_grid("karras", den.schedule, 12, final=final)
    x = float(den.schedule.sigma(g.t_start)) * initial_noise([0, 1, 2], den.data_shape)
    pairs = [("euler_cfg_pp", "ddim"), ("dpmpp_2m_cfg_pp", "dpmpp_2m")]
    for pp, base in pairs:
        a, b = get_solver(pp), get_solver(base)
        sa = a.solve(a.make_dynamics(den), x.clone(), g)
        sb = b.solve(b.make_dynamics(den), x.clone(), g)
        assert torch.equal(sa.x, sb.x) and sa.nfe == sb.nfe and sa.forward_passes == sb.nfe
    cond = _cond_model()
    y = torch.tensor([3, 7])
    null = {"y": torch.full_like(y, cond.num_classes)}
    g = make_grid("karras", cond.schedule, 6, final=final)
    x = float(cond.schedule.sigma(g.t_start)) * initial_noise([0, 1], cond.data_shape)
    for pp, base in pairs:
        a, b = get_solver(pp), get_solver(base)
        sa = a.solve(a.make_dynamics(guided(cond, -1.0), cond={"y": y}), x.clone(), g)
        sb = b.solve(b.make_dynamics(cond, cond=null), x.clone(), g)
        assert _rel(sa.x, sb.x) < 1e-12, (pp, _rel(sa.x, sb.x))


def test_cfg_pp_differs_from_cfg():
    """At w > 0 CFG++ is not standard CFG (its re-noising direction is unconditional)."""
    den = _cond_model()
    y = torch.tensor([3, 7])
    g = make_grid("karras", den.schedule, 6)
    x = float(den.schedule.sigma(g.t_start)) * initial_noise([0, 1], den.data_shape)
    a, b = get_solver("euler_cfg_pp"), get_solver("ddim")
    sa = a.solve(a.make_dynamics(guided(den, 1.0), cond={"y": y}), x.clone(), g)
    sb = b.solve(b.make_dynamics(guided(den, 1.0), cond={"y": y}), x.clone(), g)
    assert _rel(sa.x, sb.x) > 1e-3


def test_spec_guidance_reaches_cfg_pp_range():
    """Specs take w >= -1 (CFG++'s lambda = 1 + w in [0, 1]); below -1 is a user error."""
    from samplerbench.bench.spec import parse_spec
    from samplerbench.models.errors import UserError

    raw = {"models": ["digits-cond-rf"], "solvers": ["euler_cfg_pp"], "steps": [4]}
    assert parse_spec({**raw, "guidance": [-1.0, -0.4, 0.0]}).guidance == [-1.0, -0.4, 0.0]
    with pytest.raises(UserError, match="guidance"):
        parse_spec({**raw, "guidance": [-1.5]})


def test_sample_guidance_option(tmp_path, capsys):
    """``sample --guidance W``: one guided evaluation per NFE (2 forward passes); at w = -1
    (CFG++'s lambda = 0) euler_cfg_pp is the unconditional model's ddim; an unconditional model
    or w < -1 exits 2 naming --guidance."""
    import numpy as np

    from samplerbench.bench.cli import main

    def run(solver, w, out):
        assert main(["sample", "digits-cond-rf", solver, "--steps", "4", "--n", "3",
                     "--guidance", str(w), "--dtype", "float64", "--out", str(out)]) == 0
        return np.load(out)

    a = run("euler_cfg_pp", -1, tmp_path / "a.npz")
    b = run("ddim", -1, tmp_path / "b.npz")
    c = run("ddim", 2, tmp_path / "c.npz")
    assert int(a["nfe"]) == 4 and int(a["forward_passes"]) == 8 and float(a["guidance"]) == -1
    assert np.abs(a["x"] - b["x"]).max() <= 1e-10 * np.abs(b["x"]).max()
    assert np.abs(c["x"] - b["x"]).max() > 1e-2                  # guidance changes the samples
    capsys.readouterr()
    for argv in (["digits-rf", "ddim", "--guidance", "1"],
                 ["digits-cond-rf", "ddim", "--guidance", "-2"]):
        assert main(["sample", *argv, "--steps", "2", "--out", str(tmp_path / "x.npz")]) == 2
        err = capsys.readouterr().err
        assert "--guidance" in err and "Traceback" not in err
