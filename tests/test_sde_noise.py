"""Noise sources (issue 4): the counter-based generator, ``fresh`` and the virtual Brownian tree
behind ``brownian`` -- per-sample seeding, batch invariance, path consistency -- and the torchsde
adapter."""

from __future__ import annotations

import math

import pytest
import torch

from samplerbench.solvers import make_grid, make_noise
from samplerbench.solvers.noise import (BrownianNoise, CounterNormals, FreshNoise, _normals, _i64, _mix64_,
                           mix64, sample_seeds)
from samplerbench.solvers.sde.torchsde_methods import noise_brownian
from samplerbench.models.zoo import load_model


def test_mix64_matches_python_reference():
    vals = [0, 1, 12345, (1 << 63) - 5, 0xDEADBEEFCAFEBABE, (1 << 64) - 1]
    got = _mix64_(torch.tensor([_i64(v) for v in vals], dtype=torch.int64)).tolist()
    assert [g & ((1 << 64) - 1) for g in got] == [mix64(v) for v in vals]
    # SplitMix64's published first output for seed 0 (state advanced by the golden gamma)
    assert mix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


def test_normals_are_finite_and_symmetric_at_every_extreme_bit_pattern():
    halves = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, 0x80000001, 0xFFFFFF00, 0xFFFFFFFF]
    words = [_i64((hi << 32) | lo) for hi in halves for lo in halves]
    z = _normals(torch.tensor(words, dtype=torch.int64))
    assert z.shape == (2 * len(words),)
    assert torch.isfinite(z).all() and 5.0 < float(z.abs().max()) < 5.5
    # bit patterns v and ~v (= -v - 1) give exactly opposite normals
    v = torch.tensor([_i64(w) for w in (0x0123456789ABCDEF, 0x7FFFFFFF00000000)], dtype=torch.int64)
    torch.testing.assert_close(_normals(v), -_normals(torch.bitwise_not(v)), rtol=0, atol=0)


def test_counter_normals_are_standard_normal():
    gen = CounterNormals(range(500), 64)
    z = gen.draw_many(2, range(8)).reshape(-1, 64).double()          # 4000 x 64
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96 / n)
    corr = torch.corrcoef(z.T) - torch.eye(64, dtype=torch.float64)
    assert float(corr.abs().max()) < 6 / math.sqrt(z.shape[0])
    # one-node draw == the same node inside a multi-node draw; nodes and domains differ
    torch.testing.assert_close(gen.draw(2, 5), gen.draw_many(2, [3, 5])[1], rtol=0, atol=0)
    assert not torch.equal(gen.draw(2, 5), gen.draw(2, 6))
    assert not torch.equal(gen.draw(2, 5), gen.draw(3, 5))


def test_fresh_is_per_sample_and_batch_invariant():
    big = FreshNoise(sample_seeds(0, 64), (1, 8, 8))
    one = FreshNoise([17], (1, 8, 8))
    for _ in range(3):
        zb, z1 = big(1.0, 0.5), one(1.0, 0.5)
        assert zb.shape == (64, 1, 8, 8) and zb.dtype == torch.float64
        torch.testing.assert_close(zb[17:18], z1, rtol=0, atol=0)
    # successive calls are new draws; the same seed restarts the stream
    again = FreshNoise([17], (1, 8, 8))
    a, b = again(1.0, 0.5), again(1.0, 0.5)
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, FreshNoise([17], (64,))(1.0, 0.5).reshape(1, 1, 8, 8))


@pytest.fixture(scope="module")
def path64():
    return BrownianNoise(sample_seeds(0, 64), (1, 8, 8), 0.002, 80.0)


def test_brownian_batch_and_shape_invariant(path64):
    ts = [80.0, 31.4, 2.5, 0.3, 0.0021]
    for i in (0, 17, 63):
        single = BrownianNoise([i], (64,), 0.002, 80.0)
        for t in ts:
            torch.testing.assert_close(single.value(t).reshape(1, 1, 8, 8),
                                       path64.value(t)[i:i + 1], rtol=0, atol=0)


def test_brownian_values_do_not_depend_on_query_order():
    ts = [80.0, 55.0, 13.7, 13.69, 1.0, 0.7, 0.05, 0.002]
    a = BrownianNoise(sample_seeds(3, 5), (2,), 0.002, 80.0)
    b = BrownianNoise(sample_seeds(3, 5), (2,), 0.002, 80.0)
    wa = {t: a.value(t).clone() for t in ts}
    for t in [ts[i] for i in (4, 0, 7, 2, 6, 1, 5, 3)] + ts[::-1]:
        torch.testing.assert_close(b.value(t), wa[t], rtol=0, atol=0)
    assert float(wa[0.002].abs().max()) == 0.0          # W(t_lo) = 0


def test_brownian_increments_add_up(path64):
    a, b, c = 60.0, 7.25, 0.013
    whole = path64(a, c) * math.sqrt(a - c)
    parts = path64(a, b) * math.sqrt(a - b) + path64(b, c) * math.sqrt(b - c)
    torch.testing.assert_close(whole, parts, rtol=1e-12, atol=1e-12)
    # the direction of the query does not matter; the increment is W(t0) - W(t1) for t0 > t1
    torch.testing.assert_close(path64(c, a), path64(a, c), rtol=0, atol=0)
    torch.testing.assert_close(path64.increment(a, c), path64.value(a) - path64.value(c))


def test_brownian_increment_statistics():
    """Increments over disjoint intervals are independent N(0, |dt|), from the largest interval to
    a step near t_min (relative width 1e-3, 16 leaves of the default tree)."""
    src = BrownianNoise(sample_seeds(0, 2000), (4,), 0.002, 80.0)
    pts = [80.0, 79.0, 20.0, 1.0, 0.9, 0.01, 0.00999, 0.002]
    zs = [src(t0, t1).reshape(-1) for t0, t1 in zip(pts[:-1], pts[1:])]
    n = zs[0].numel()
    for z in zs:
        assert abs(float(z.mean())) < 5 / math.sqrt(n)
        assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    c = torch.corrcoef(torch.stack(zs)) - torch.eye(len(zs), dtype=torch.float64)
    assert float(c.abs().max()) < 5 / math.sqrt(n)


def test_brownian_path_is_the_same_at_every_step_count():
    """make_noise puts the path on the grid's positive interval, which does not depend on the step
    count: the increments of an N-step grid are sums of those of another grid's refinement."""
    den = load_model("gmm2d")
    g8 = make_grid("karras", den.schedule, 8)
    g16 = make_grid("karras", den.schedule, 16)
    a = make_noise("brownian", [5, 6], den.data_shape, g8)
    b = make_noise("brownian", [5, 6], den.data_shape, g16)
    assert (a.t_lo, a.t_hi) == (b.t_lo, b.t_hi)
    for t in g16.t[:-1].tolist() + g8.t[:-1].tolist():
        torch.testing.assert_close(a.value(t), b.value(t), rtol=0, atol=0)


def test_brownian_float32_sees_the_same_path():
    a = BrownianNoise([1, 2], (8,), 0.002, 80.0)
    b = BrownianNoise([1, 2], (8,), 0.002, 80.0, dtype=torch.float32)
    za, zb = a(3.0, 2.0), b(3.0, 2.0)
    assert zb.dtype == torch.float32
    torch.testing.assert_close(zb.double(), za, rtol=1e-5, atol=1e-5)


def test_brownian_rejects_bad_queries():
    src = BrownianNoise([0], (2,), 0.5, 1.0)
    with pytest.raises(ValueError, match="outside"):
        src(1.5, 1.0)
    with pytest.raises(ValueError, match="empty"):
        src(0.7, 0.7)
    with pytest.raises(ValueError, match="t_lo"):
        BrownianNoise([0], (2,), 1.0, 0.5)
    lin = BrownianNoise([0], (2,), 0.0, 1.0)            # t_lo = 0: arithmetic splits
    assert not lin.geometric and float(lin.value(0.0).abs().max()) == 0.0


def test_make_noise_modes():
    den = load_model("gmm2d")
    g = make_grid("karras", den.schedule, 4)
    assert make_noise("fresh", [0], (2,), g).mode == "fresh"
    assert make_noise("brownian", [0], (2,), g).mode == "brownian"
    from samplerbench.models.errors import UserError
    with pytest.raises(UserError, match="brownian"):
        make_noise("pink", [0], (2,), g)


@pytest.mark.parametrize("mode", ["fresh", "brownian"])
def test_torchsde_adapter(mode):
    """The BaseBrownian wrapper: increments on s = -t equal the source's (same numbers), and U is
    the space-time Levy area's law h (W/2 + H), H ~ N(0, h/12)."""
    den = load_model("gmm2d")
    g = make_grid("karras", den.schedule, 4)
    seeds = sample_seeds(0, 3000)
    src = make_noise(mode, seeds, (2,), g)
    ref = make_noise(mode, seeds, (2,), g)
    bm = noise_brownian(src, 3000, 2, torch.float64, "cpu")
    assert bm.shape == (3000, 2) and bm.levy_area_approximation == "space-time"
    sa, sb = torch.tensor(-5.0, dtype=torch.float64), torch.tensor(-4.0, dtype=torch.float64)
    w = bm(sa, sb)
    torch.testing.assert_close(w, ref(5.0, 4.0).reshape(3000, 2), rtol=1e-14, atol=1e-14)
    w, u = bm(sa, sb, return_U=True)
    h = 1.0
    hh = (u / h - 0.5 * w).reshape(-1)
    assert abs(float(hh.var()) - h / 12) < 5 * (h / 12) * math.sqrt(2 / hh.numel())
    assert abs(float(torch.corrcoef(torch.stack([hh, w.reshape(-1)]))[0, 1])) < 0.05
