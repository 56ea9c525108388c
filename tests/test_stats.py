"""The statistics behind published rankings (samplerbench.bench.stats): jackknife standard errors
against the spread over independent seeds, the paired test's size and power, rank groups, alias
detection from the data, and equal NFE budgets."""

import math

import pytest
import torch

from samplerbench.bench import stats
from samplerbench.bench.metrics import frechet_gaussian
from samplerbench.models.errors import UserError

D = 8
MEAN, COV = torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64)


def _fd(x):
    return frechet_gaussian(x, MEAN, COV)


def _draw(seed, n=1024, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64) + shift


def test_jackknife_se_matches_the_sd_over_independent_seeds():
    """The standard error from 8 seed blocks agrees (within 1.5x) with the sd of the metric over
    40 independent sample sets."""
    vals, ses = [], []
    for s in range(40):
        j = stats.jackknife(_fd, _draw(s), 8)
        vals.append(j["value"])
        ses.append(j["se"])
    sd = stats.mean_sd(vals)[1]
    mean_se = sum(ses) / len(ses)
    assert 1 / 1.5 < mean_se / sd < 1.5, (mean_se, sd)


def test_fid_se_of_digits_matches_the_sd_over_independent_draws(tmp_path):
    from samplerbench.bench.fid import DigitsFID, _digits01

    fid = DigitsFID(cache_dir=tmp_path)
    x = _digits01()[0] * 2 - 1
    vals, ses = [], []
    for s in range(24):
        g = torch.Generator().manual_seed(s)
        xs = x[torch.randint(x.shape[0], (1024,), generator=g)] \
            + 0.2 * torch.randn(1024, 1, 8, 8, generator=g)
        out = fid.score(xs, blocks=8)
        vals.append(out["fid"])
        ses.append(out["fid_se"])
    ratio = (sum(ses) / len(ses)) / stats.mean_sd(vals)[1]
    assert 1 / 1.5 < ratio < 1.5, ratio


def _pair(seed, shift_b=0.0, corr=0.0):
    """Two 'samplers' on the same seeds: B is A's noise mixed with its own (correlation corr)."""
    a = _draw(seed)
    own = _draw(10_000 + seed)
    b = corr * a + math.sqrt(1 - corr**2) * own + shift_b
    ja, jb = stats.jackknife(_fd, a, 8), stats.jackknife(_fd, b, 8)
    return ([{"value": ja["value"], "blocks": ja["blocks"]},
             {"value": jb["value"], "blocks": jb["blocks"]}])


@pytest.mark.parametrize("corr", [0.0, 0.9])
def test_two_samplers_of_one_distribution_share_a_rank_group(corr):
    together = sum(stats.rank_groups(_pair(s, corr=corr)) == [1, 1] for s in range(100))
    assert together >= 90, together


@pytest.mark.parametrize("corr", [0.0, 0.9])
def test_clearly_different_samplers_are_separated(corr):
    # B's mean is off by 0.25 per dimension: Frechet distance ~0.5 above A's
    apart = sum(stats.rank_groups(_pair(s, shift_b=0.25, corr=corr)) == [1, 2]
                for s in range(50))
    assert apart >= 45, apart


def test_rank_groups_chain_and_untestable_entries():
    e = [{"value": 1.0, "blocks": [1.0, 1.1, 0.9, 1.0]},
         {"value": 1.02, "blocks": [1.03, 1.1, 0.93, 1.02]},      # ~ the best
         {"value": 5.0, "blocks": [5.0, 5.1, 4.9, 5.0]},
         {"value": 0.5, "blocks": None}]                         # no blocks: alone
    assert stats.rank_groups(e) == [2, 2, 3, 1]
    t = stats.paired(1.0, [1.0, 1.0], 1.0, [1.0, 1.0])
    assert t["p"] == 1.0 and t["se"] == 0.0


def test_block_helpers():
    assert stats.default_blocks(2048) == 8 and stats.default_blocks(100) == 5
    assert stats.default_blocks(7) == 7 and stats.default_blocks(11) is None
    assert stats.block_bounds(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert [i.tolist() for i in stats.leave_one_out(4, 2)] == [[2, 3], [0, 1]]
    with pytest.raises(ValueError):
        stats.block_bounds(10, 3)
    assert stats.jackknife_se([1.0, 1.0, 1.0]) == 0.0
    assert stats.jackknife_se([1.0]) is None


# --- aliases: identical samples under two names, from the data ----------------------------------

def _solve(model, solver, steps=6, dtype=torch.float64, n=32):
    from samplerbench.models.zoo import load_model
    from samplerbench.solvers import get_solver, initial_noise, make_grid

    den = load_model(model)
    s = get_solver(solver)
    grid = make_grid("karras", den.schedule, steps)
    x = initial_noise(range(n), den.data_shape, dtype=dtype) * float(den.schedule.sigma(
        grid.t_start))
    return s.solve(s.make_dynamics(den), x, grid).x


def _row(x, state_dtype="float64"):
    return {"x_fingerprint": stats.fingerprint(x), "x_rms": float(x.double().pow(2).mean().sqrt()),
            "state_dtype": state_dtype}


def test_alias_detection_merges_identical_algorithms_only():
    """On a VP model ddim and dpm_solver_1 are one update (aliases), euler and heun are not; on
    EDM (alpha = 1) euler is ddim too: detected from the samples, not from a list."""
    vp = {s: _solve("gmm64-vp", s) for s in ("ddim", "dpm_solver_1", "euler", "heun")}
    groups = stats.alias_groups([_row(vp[s]) for s in vp])
    assert groups == [[0, 1], [2], [3]]
    edm = {s: _solve("gmm64", s) for s in ("ddim", "dpm_solver_1", "euler", "heun")}
    assert stats.alias_groups([_row(edm[s]) for s in edm]) == [[0, 1, 2], [3]]


def test_alias_tolerance_float64_and_float32():
    x = _draw(0, 256)
    assert stats.alias_groups([_row(x), _row(x * (1 + 1e-9))]) == [[0], [1]]   # float64: 1e-12
    x32 = x.float()
    y32 = (x32.double() * (1 + 3e-8)).float()               # last-bit differences
    assert stats.alias_groups([_row(x32, "float32"), _row(y32, "float32")]) == [[0, 1]]
    z32 = (x32 + 1e-3).float()
    assert stats.alias_groups([_row(x32, "float32"), _row(z32, "float32")]) == [[0], [1]]


# --- equal NFE budgets -------------------------------------------------------------------------

@pytest.mark.parametrize("solver,budget,expected", [
    ("euler", 8, (8, 8)), ("heun", 8, (4, 7)), ("heun", 6, (3, 5)), ("dpmpp_2s", 10, (5, 9)),
    ("rk4", 8, (2, 5)), ("dpmpp_2m", 40, (40, 40)), ("euler_ancestral", 4, (4, 4)),
    ("dpmpp_sde", 7, (4, 7)), ("edm_stochastic", 10, (5, 9)), ("bosh3", 10, (4, 10))])
def test_steps_for_budget_is_the_largest_step_count_within_it(solver, budget, expected):
    from samplerbench.bench.budgets import steps_for_budget
    from samplerbench.models.zoo import load_model
    from samplerbench.solvers import get_solver

    den = load_model("gmm64")
    assert steps_for_budget(get_solver(solver), den, "karras", {}, "zero", budget) == expected


def test_budget_below_one_step_is_none():
    from samplerbench.bench.budgets import steps_for_budget
    from samplerbench.models.zoo import load_model
    from samplerbench.solvers import get_solver

    assert steps_for_budget(get_solver("rk4"), load_model("gmm64"), "karras", {}, "t_min",
                            3) is None


def test_budget_cells_in_a_run(tmp_path):
    """A run with an nfe axis: rows carry the budget, the resolved steps and the counted NFE (the
    real solve's, equal to the dry run's); budgets that resolve to the same step count are one
    computation; every quality metric has its se, blocks and floor."""
    from samplerbench.bench.runner import rows, run_spec
    from samplerbench.bench.spec import parse_spec

    spec = parse_spec({"name": "b", "models": ["gmm64"], "solvers": ["heun", "ddim"],
                       "nfe": [5, 6, 8], "samples": 64, "dtype": "float64",
                       "metrics": {"nonconv": False, "blocks": 4}})
    run_spec(spec, tmp_path, progress=False)
    got = {(r["solver"], r["nfe_budget"]): r for r in rows(tmp_path)}
    assert len(got) == 6 and all(r["status"] == "ok" for r in got.values())
    assert [(got["heun", b]["steps"], got["heun", b]["nfe"]) for b in (5, 6, 8)] == \
        [(3, 5), (3, 5), (4, 7)]
    assert got["heun", 5]["fid"] == got["heun", 6]["fid"]
    assert [got["ddim", b]["nfe"] for b in (5, 6, 8)] == [5, 6, 8]
    r = got["ddim", 8]
    assert len(r["fid_blocks"]) == 4 and r["fid_se"] > 0 and r["swd_se"] > 0
    assert r["fid_floor"] > 0 and r["fid_floor_sd"] > 0 and r["blocks"] == 4
    assert r["err_rms_se"] > 0 and len(r["x_fingerprint"]) == stats.FINGERPRINT_DIM


@pytest.mark.parametrize("raw,field", [
    ({"nfe": [0, 4]}, "nfe"), ({"nfe": [4, 4]}, "nfe"), ({"nfe": ["8"]}, "nfe"),
    ({"metrics": {"blocks": 1}}, "metrics.blocks"), ({"metrics": {"blocks": 5}}, "metrics.blocks"),
    ({"metrics": {"blocks": 2.5}}, "metrics.blocks"),
    ({"timing": {"single_over_s": -1}}, "timing.single_over_s")])
def test_bad_budget_and_block_values_name_the_field(raw, field):
    from samplerbench.bench.spec import parse_spec

    base = {"models": ["gmm2d"], "solvers": ["euler"], "steps": [4], "samples": 64}
    with pytest.raises(UserError) as e:
        parse_spec({**base, **raw})
    assert e.value.field == field


def test_timed_single_solve_for_slow_cells():
    import time

    from samplerbench.bench.metrics import timed

    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.02)
        return len(calls)

    out, wall, times = timed(slow, torch.device("cpu"), warmup=1, repeats=3, single_over_s=0.01)
    assert (out, len(calls), len(times)) == (1, 1, 1) and wall >= 0.02
    calls.clear()
    out, wall, times = timed(slow, torch.device("cpu"), warmup=1, repeats=3, single_over_s=10)
    assert (out, len(calls), len(times)) == (4, 4, 3)         # first = the warm-up
    calls.clear()
    out, wall, times = timed(slow, torch.device("cpu"), warmup=0, repeats=3, single_over_s=10)
    assert (out, len(calls), len(times)) == (3, 3, 3)         # first = the first repeat
