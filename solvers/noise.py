"""Noise sources for stochastic solvers, and the per-sample initial noise.

Randomness is explicit and per sample: sample i uses seed ``seed + i`` for its initial noise and its
own noise stream, so results do not depend on batch size or device count.

A noise source is called as ``noise(t0, t1) -> z`` and returns a standard-normal draw z [B, *S]
for the step from t0 to t1; the Brownian increment of that step is ``z * sqrt(|t1 - t0|)``.
  ``fresh``     a new Gaussian draw per call (k-diffusion's default for ancestral samplers), keyed
                by (sample seed, call counter)
  ``brownian``  increments of one Brownian path per sample, (W(t0) - W(t1)) / sqrt(t0 - t1): a
                virtual Brownian tree (as diffrax's ``VirtualBrownianTree``), so W(t) is a
                deterministic function of (sample seed, t) -- the same path whatever the step
                count, the query order or the batch

Both draw from one counter-based generator: SplitMix64 (Steele, Lea & Flood 2014) on int64
tensors, keyed by (sample, node), then the inverse normal CDF.  Every draw is a pure function of its key, so a
whole batch is generated in a few vectorised tensor operations (no per-sample ``torch.Generator``),
on any device, and sample i's numbers do not depend on the other samples.
"""

from __future__ import annotations

import math
import struct
import sys

import torch

from samplerbench.models.errors import UserError

NOISE_MODES = ("fresh", "brownian")
_STREAM_OFFSET = 1 << 40     # noise streams never share a seed with initial noise

# --------------------------------------------------------------------------------------------
# counter-based generator: SplitMix64 finaliser on int64 tensors + inverse normal CDF
# --------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _i64(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits (torch has no uint64 math)."""
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


_GAMMA = _i64(0x9E3779B97F4A7C15)    # SplitMix64 increment (golden ratio)
_NODE_GAMMA = _i64(0xD1B54A32D192ED03)
_M1 = _i64(0xBF58476D1CE4E5B9)
_M2 = _i64(0x94D049BB133111EB)
# domains keep the streams of the different noise kinds apart
_DOMAIN_INIT, _DOMAIN_FRESH, _DOMAIN_TREE, _DOMAIN_LEVY, _DOMAIN_LEAF = 0, 1, 2, 3, 4
_LITTLE = sys.byteorder == "little"


def _mix64_(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser, in place on an int64 tensor.  Products wrap modulo 2^64; torch's
    ``>>`` is arithmetic on int64, so each shift is masked to make it logical."""
    z.bitwise_xor_(torch.bitwise_right_shift(z, 30).bitwise_and_((1 << 34) - 1))
    z.mul_(_M1)
    z.bitwise_xor_(torch.bitwise_right_shift(z, 27).bitwise_and_((1 << 37) - 1))
    z.mul_(_M2)
    z.bitwise_xor_(torch.bitwise_right_shift(z, 31).bitwise_and_((1 << 33) - 1))
    return z


def mix64(v: int) -> int:
    """The SplitMix64 finaliser on a Python int (reference for the tensor version)."""
    v &= _MASK64
    v = ((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    v = ((v ^ (v >> 27)) * 0x94D049BB133111EB) & _MASK64
    return v ^ (v >> 31)


def _normals(z: torch.Tensor) -> torch.Tensor:
    """float32 normals [..., 2 P] from 64-bit words z [..., P] by the inverse CDF: each 32-bit
    half v (read through an int32 view, signed, low half first) gives the odd integer
    k = (v >> 7) | 1 in [-(2^24 - 1), 2^24 - 1], uniform over the odd integers and exact in
    float32, so u = k 2^-24 is uniform on a symmetric lattice in (-1, 1) that never reaches +-1,
    and z = sqrt(2) erfinv(u) (tails cut at 5.4 sigma, a probability of 6e-8).  One transcendental
    per normal: about twice as fast on CPU as Box-Muller's log, sqrt, cos and sin."""
    halves = z.view(torch.int32)
    if not _LITTLE:     # the low half first on every platform: the same numbers everywhere
        halves = halves.reshape(z.shape + (2,)).flip(-1).reshape(halves.shape)
    u = torch.bitwise_right_shift(halves, 7).bitwise_or_(1).to(torch.float32).mul_(2.0**-24)
    return torch.erfinv(u).mul_(math.sqrt(2.0))


class CounterNormals:
    """Standard normals that are pure functions of (sample seed, domain, node, element).

    Sample i's key is mix64(seed_i); node n's key is mix64(key_i + (domain, n) * gamma'); element
    pair j is the j-th output of the SplitMix64 stream started at that node key, whose two 32-bit
    halves make two normals by the inverse normal CDF (see ``_normals``).  The transform runs in float32 whatever the run's
    dtype (twice as fast as float64 on CPU; the numbers are exact in float64, so float32 and
    float64 runs see the same noise up to the final rounding).  ``draw`` returns [B, n] float32."""

    def __init__(self, seeds, n: int, device="cpu"):
        self.n = int(n)
        self.device = torch.device(device)
        if (isinstance(seeds, range) and seeds.step == 1 and -(1 << 63) <= seeds.start
                and seeds.stop <= (1 << 63)):
            # the harness's case (consecutive seeds): no per-sample Python work
            keys = torch.arange(seeds.start, seeds.stop, dtype=torch.int64)
        else:
            seeds = [int(s) for s in seeds]
            keys = torch.tensor(seeds if all(-(1 << 63) <= s < (1 << 63) for s in seeds)
                                else [_i64(s) for s in seeds], dtype=torch.int64)
        self.keys = _mix64_(keys.to(self.device))
        pairs = (self.n + 1) // 2
        # (j + 1) * gamma mod 2^64: torch's int64 products wrap as two's complement
        self._ctr = torch.arange(1, pairs + 1, dtype=torch.int64, device=self.device).mul_(_GAMMA)

    @staticmethod
    def node_constant(domain: int, node: int) -> int:
        return _i64(((int(node) * _NODE_GAMMA) & _MASK64) ^ mix64(int(domain)))

    def draw(self, domain: int, node: int) -> torch.Tensor:
        """[B, n] standard normals (float32) for ``node`` of ``domain`` (node: any int >= 0)."""
        return self.draw_many(domain, [node])[0]

    def draw_many(self, domain, nodes) -> torch.Tensor:
        """[len(nodes), B, n] float32: ``draw`` for several nodes in one pass (``domain``: one
        for all nodes, or one per node)."""
        nodes = list(nodes)
        domains = domain if isinstance(domain, (list, tuple)) else [domain] * len(nodes)
        consts = torch.tensor([self.node_constant(d, v) for d, v in zip(domains, nodes)],
                              dtype=torch.int64, device=self.device)
        node_keys = _mix64_(self.keys[None, :] + consts[:, None])         # [k, B]
        z = _mix64_(node_keys[..., None] + self._ctr)                      # [k, B, pairs]
        return _normals(z)[..., : self.n]


# --------------------------------------------------------------------------------------------
# seeds and initial noise
# --------------------------------------------------------------------------------------------

def sample_seeds(seed: int, n: int) -> range:
    """The per-sample seeds of a cell: ``seed, seed + 1, ..., seed + n - 1`` (a ``range``: it
    slices by shard and chunk without materialising a list)."""
    return range(int(seed), int(seed) + int(n))


def initial_noise(seeds: list[int], shape: tuple[int, ...], dtype=torch.float64,
                  device="cpu") -> torch.Tensor:
    """Standard-normal z [n, *shape]; row i is a pure function of ``seeds[i]`` (the counter-based
    generator's node 0 of the initial-noise domain), so it does not depend on the batch, the
    shard or the device.  One vectorised pass for the whole batch: a per-sample
    ``torch.Generator`` loop cost more than a 32-step solve of a cheap model."""
    n = math.prod(shape)
    gen = CounterNormals(seeds, n, device)
    z = gen.draw(_DOMAIN_INIT, 0).reshape((len(seeds),) + tuple(shape))
    return z.to(dtype=dtype)


def _stream_seeds(seeds):
    if isinstance(seeds, range):
        return range(seeds.start + _STREAM_OFFSET, seeds.stop + _STREAM_OFFSET, seeds.step)
    return [int(s) + _STREAM_OFFSET for s in seeds]


# --------------------------------------------------------------------------------------------
# fresh
# --------------------------------------------------------------------------------------------

class FreshNoise:
    """A new per-sample Gaussian draw for every call, keyed by (sample seed, call counter): the
    k-th call returns the same numbers for sample i whatever the batch."""

    mode = "fresh"

    def __init__(self, seeds, shape, dtype=torch.float64, device="cpu"):
        self.shape, self.dtype, self.device = tuple(shape), dtype, torch.device(device)
        self.batch = len(seeds)
        self.gen = CounterNormals(_stream_seeds(seeds), math.prod(self.shape), device)
        self.calls = 0

    def _next(self, domain: int) -> torch.Tensor:
        z = self.gen.draw(domain, self.calls)
        self.calls += 1
        return z.reshape((self.batch,) + self.shape).to(self.dtype)

    def __call__(self, t0: float, t1: float) -> torch.Tensor:
        return self._next(_DOMAIN_FRESH)

    def levy_h(self, t0: float, t1: float) -> torch.Tensor:
        """Standard normal xi for the space-time Levy area H = sqrt(|t1 - t0| / 12) xi of the step
        (independent of the increment): a fresh draw."""
        return self._next(_DOMAIN_LEVY)


# --------------------------------------------------------------------------------------------
# brownian: a virtual Brownian tree
# --------------------------------------------------------------------------------------------

def _float_bits(t: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(t)))[0] & _MASK64


class BrownianNoise:
    """One Brownian path per sample on [t_lo, t_hi], a virtual Brownian tree queried by interval.

    W(t_lo) = 0 and W(t_hi) = sqrt(t_hi - t_lo) z_0.  Each tree node [s, u] is split at a fixed
    point m (the geometric mean sqrt(s u) when t_lo > 0, so that the leaves have the same
    *relative* width everywhere -- what karras/logsnr grids need near t_min -- and the arithmetic
    mean otherwise), and W(m) is the exact Brownian-bridge draw
    W(s) + (m - s)/(u - s) (W(u) - W(s)) + sqrt((m - s)(u - m)/(u - s)) z_node, with z_node from
    the counter-based generator keyed by (sample seed, node id).  Bisection stops at leaves of
    width ``tol`` (relative width for the geometric split, a fraction of t_hi - t_lo for the
    arithmetic one; default 2^-10: 13-14 levels on the built-in schedules).  Inside a leaf [a, b],
    W(t) = (linear interpolation) + sqrt((t - a)(b - t)/(b - a)) xi_leaf with one draw xi_leaf per
    leaf: the exact Brownian-bridge marginal at every t, continuous in t, zero at the leaf's ends.

    So W(t) is a deterministic function of (seed, t): independent of the batch, of the query
    points and of their order, hence the same path at N and 2N steps.  The joint law of W at any
    set of times with at most one time per leaf is exactly Brownian (the skeleton is exact and the
    bridges of distinct leaves are independent), so increments are exact for every grid whose
    steps exceed one leaf (with the default, relative steps > 1e-3: karras and logsnr grids up to
    ~5000 steps on EDM, uniform grids up to ~1000 steps on [0, 1]).  Two query times inside one
    leaf see an increment with too little variance (as a linear interpolation would at that
    scale); a smaller ``tol`` moves that limit at log2 cost.

    Cost: the nodes on the path to the last query are cached, and solvers query consecutive
    intervals, so a query draws only the nodes below the level where its path leaves the previous
    one, plus its leaf -- about log2(step / leaf) + 2 normal vectors of size [B, D] (12 per step
    at 32 karras steps on EDM, 9 at 256; a fresh step draws 1).  The last few W values are cached
    too (``noise(t0, t1)`` then ``noise(t1, t2)`` evaluates W(t1) once)."""

    mode = "brownian"
    default_tol = 2.0**-10

    def __init__(self, seeds, shape, t_lo: float, t_hi: float, tol: float | None = None,
                 dtype=torch.float64, device="cpu"):
        self.shape, self.dtype, self.device = tuple(shape), dtype, torch.device(device)
        self.batch = len(seeds)
        self.t_lo, self.t_hi = float(t_lo), float(t_hi)
        if not (math.isfinite(self.t_lo) and math.isfinite(self.t_hi) and
                0.0 <= self.t_lo < self.t_hi):
            raise ValueError(f"a Brownian path needs 0 <= t_lo < t_hi, got [{t_lo}, {t_hi}]")
        self.tol = float(tol if tol is not None else self.default_tol)
        if not (1e-12 <= self.tol < 1.0):
            raise ValueError(f"tol must lie in [1e-12, 1), got {tol}")
        self.geometric = self.t_lo > 0.0
        span = math.log(self.t_hi / self.t_lo) if self.geometric else 1.0
        self.depth = max(1, math.ceil(math.log2(span / self.tol)))
        self.gen = CounterNormals(_stream_seeds(seeds), math.prod(self.shape), device)
        # the tree's arithmetic runs in the run's dtype (float32 at least); draws are float32
        self._wdtype = torch.float64 if dtype == torch.float64 else torch.float32
        root = self.gen.draw(_DOMAIN_TREE, 0).to(self._wdtype) * math.sqrt(self.t_hi - self.t_lo)
        # path cache: per level (node id, s, u, W(s), W(u)); level 0 is the root [t_lo, t_hi]
        self._path = [(1, self.t_lo, self.t_hi, torch.zeros_like(root), root)]
        self._leaf: tuple[int, torch.Tensor] | None = None
        self._values: dict[float, torch.Tensor] = {}

    # ----------------------------------------------------------------------------------------
    def _draws(self, domains: list[int], nodes: list[int]) -> list[torch.Tensor]:
        if not nodes:
            return []
        if self.device.type == "cpu" and len(nodes) * self.batch * self.gen.n > 1 << 17:
            # level by level: cache-friendly on CPU for large batches
            return [self.gen.draw(d, v) for d, v in zip(domains, nodes)]
        # small batches (per-op overhead) and GPUs (kernel launches): all levels in one pass
        return list(self.gen.draw_many(domains, nodes).unbind(0))

    def _split(self, s: float, u: float) -> float:
        m = math.sqrt(s * u) if self.geometric else 0.5 * (s + u)
        return min(max(m, s), u)

    def _w(self, t: float) -> torch.Tensor:
        """W(t) [B, D] in the tree's dtype (no value cache)."""
        path = self._path
        node, s, u, ws, wu = path[0]
        level = 0
        while level < self.depth:                      # walk down the cached part of the path
            m = self._split(s, u)
            child = 2 * node + (0 if t < m else 1)
            if level + 1 >= len(path) or path[level + 1][0] != child:
                break
            level += 1
            node, s, u, ws, wu = path[level]
        del path[level + 1:]
        plan = []                                      # the new nodes below: fixed by t alone
        for _ in range(level, self.depth):
            m = self._split(s, u)
            left = t < m
            plan.append((node, s, m, u, left))
            node = 2 * node + (0 if left else 1)
            s, u = (s, m) if left else (m, u)
        nodes = [p[0] for p in plan]
        domains = [_DOMAIN_TREE] * len(nodes)
        new_leaf = self._leaf is None or self._leaf[0] != node
        if new_leaf:
            nodes.append(node)
            domains.append(_DOMAIN_LEAF)
        draws = self._draws(domains, nodes)
        if new_leaf:
            self._leaf = (node, draws.pop())
        for (parent, s, m, u, left), z in zip(plan, draws):
            # the Brownian-bridge draw at m given W(s), W(u)
            wm = torch.lerp(ws, wu, (m - s) / (u - s))
            wm.add_(z, alpha=math.sqrt((m - s) * (u - m) / (u - s)))
            s, u, ws, wu = (s, m, ws, wm) if left else (m, u, wm, wu)
            path.append((2 * parent + (0 if left else 1), s, u, ws, wu))
        # inside the leaf: interpolation plus the bridge's marginal spread at t
        w = torch.lerp(ws, wu, (t - s) / (u - s))
        spread = (t - s) * (u - t) / (u - s)
        if spread > 0.0:
            w.add_(self._leaf[1], alpha=math.sqrt(spread))
        return w

    def _check_t(self, t: float) -> float:
        t = float(t)
        slack = 1e-12 * max(abs(self.t_hi), 1.0)
        if not (self.t_lo - slack <= t <= self.t_hi + slack):
            raise ValueError(f"Brownian path queried at t = {t!r}, outside its interval "
                             f"[{self.t_lo!r}, {self.t_hi!r}]")
        return min(max(t, self.t_lo), self.t_hi)

    def value(self, t: float) -> torch.Tensor:
        """W(t) [B, *S] (W(t_lo) = 0), in the generator's dtype."""
        t = self._check_t(t)
        w = self._values.get(t)
        if w is None:
            w = self._w(t)
            if len(self._values) >= 4:
                self._values.pop(next(iter(self._values)))
            self._values[t] = w
        return w.reshape((self.batch,) + self.shape)

    def increment(self, t0: float, t1: float) -> torch.Tensor:
        """W(max(t0, t1)) - W(min(t0, t1)) [B, *S]."""
        lo, hi = sorted((self._check_t(t0), self._check_t(t1)))
        return self.value(hi) - self.value(lo)

    def __call__(self, t0: float, t1: float) -> torch.Tensor:
        lo, hi = sorted((self._check_t(t0), self._check_t(t1)))
        if hi <= lo:
            raise ValueError(f"noise queried on an empty interval [{t0!r}, {t1!r}]")
        dw = self.value(hi) - self.value(lo)
        return dw.mul_(1.0 / math.sqrt(hi - lo)).to(self.dtype)

    def levy_h(self, t0: float, t1: float) -> torch.Tensor:
        """Standard normal xi for the space-time Levy area H = sqrt(|t1 - t0| / 12) xi of the
        interval, keyed by (sample seed, the interval's end points): deterministic and independent
        of the increment, but not a functional of the tree's path (solvers that need the exact
        Levy area of the path lose their extra half order; see ``torchsde_srk``)."""
        lo, hi = sorted((self._check_t(t0), self._check_t(t1)))
        node = mix64(_float_bits(lo) ^ mix64(_float_bits(hi)))
        return self.gen.draw(_DOMAIN_LEVY, node).reshape((self.batch,) + self.shape).to(self.dtype)


def make_noise(mode: str, seeds, shape, grid, dtype=torch.float64, device="cpu"):
    """Build the noise source ``mode`` for a batch with per-sample ``seeds`` over ``grid``."""
    if mode == "fresh":
        return FreshNoise(seeds, shape, dtype, device)
    if mode == "brownian":
        # the path lives on the grid's positive interval, which does not depend on the step count
        return BrownianNoise(seeds, shape, grid.t_end, grid.t_start, None, dtype, device)
    raise UserError("noise", mode, NOISE_MODES)
