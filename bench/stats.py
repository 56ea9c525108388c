"""The statistics that decide a ranking: seed blocks, jackknife standard errors, paired tests,
rank groups and aliases.  Used by the runner (to store what a test needs in every row) and by the
reports (to test and group), so that both read the same rules.

Seed blocks.  A cell's n samples (sample i has seed ``seed + i``) are split into B contiguous
blocks of n / B seeds.  Every cell of a matrix uses the same seeds, so block k of one solver and
block k of another start from the same initial noise: the blocks pair.

Standard error: the delete-one-block jackknife.  For a metric theta (FID, KID, Frechet distance,
sliced Wasserstein) computed on all n samples, theta_(k) is the metric on the n - n/B samples
outside block k, and

    se = sqrt((B - 1) / B * sum_k (theta_(k) - mean_k theta_(k))^2).

The leave-one-block-out values are computed from (B - 1)/B of the samples, so their small-sample
bias (FID's is O(d / n)) is close to that of theta itself -- unlike metrics of single blocks,
which would measure a different (more biased) quantity.  Rows store them as ``<metric>_blocks``.

Paired test.  For two cells A and B on the same seeds the jackknife of the difference,
d_(k) = A_(k) - B_(k), gives se(A - B); t = (A - B) / se(A - B) is referred to Student's t with
B - 1 degrees of freedom (two-sided).  Shared noise cancels in d_(k): paired differences are much
more precise than the two separate standard errors suggest.

Rank groups.  Cells sorted by value; group 1 is the best cell and every cell whose difference
from it is not significant at ``LEVEL``; group 2 starts at the best cell not yet grouped, and so
on.  A group says "these cannot be told apart from its first member at this sample count", never
an ordinal rank.

Aliases.  Cells whose samples are identical are one algorithm under two names (``ddim`` and
``dpm_solver_1``): rows store a fingerprint of the samples (projections on fixed random
directions, :func:`fingerprint`), and cells whose fingerprints agree to ``ALIAS_RTOL`` (float64
state) or ``ALIAS_RTOL_32`` (lower precision: the same update written in another order differs
in the last bits) are merged into one ranked entry listing every name.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

LEVEL = 0.05                 # two-sided level of the paired test behind rank groups
DEFAULT_BLOCKS = 8           # seed blocks per cell when the spec does not say
FINGERPRINT_DIM = 16         # projections stored per row
FINGERPRINT_SEED = 20261201
ALIAS_RTOL = 1e-12           # fingerprints equal to this (relative to the samples' RMS): aliases
# float32 / bfloat16 solver states: one update written in two orders (dpm_2 / dpm_solver_2,
# lms / ipndm_v, ddpm / euler_ancestral) differs in the last bits, amplified by the network over
# the steps -- measured up to 1.5e-5 on the digits U-Nets at 2048 samples -- while two different
# algorithms (dpmpp_2m / unipc_bh2, the closest pair) differ by >= 1.8e-2
ALIAS_RTOL_32 = 1e-4
FLOOR_DRAWS = 10             # independent real-data draws behind a floor's mean and sd


def default_blocks(n: int, most: int = DEFAULT_BLOCKS) -> int | None:
    """The largest number of blocks in [2, most] that divides n (None: no such number)."""
    for b in range(min(most, n), 1, -1):
        if n % b == 0:
            return b
    return None


def block_bounds(n: int, blocks: int) -> list[tuple[int, int]]:
    """Contiguous (start, end) index ranges of ``blocks`` equal blocks of n samples."""
    if blocks < 2 or n % blocks:
        raise ValueError(f"{blocks} blocks do not divide {n} samples")
    m = n // blocks
    return [(k * m, (k + 1) * m) for k in range(blocks)]


def leave_one_out(n: int, blocks: int) -> list[torch.Tensor]:
    """For each block k, the indices of the samples outside it."""
    idx = torch.arange(n)
    return [torch.cat([idx[:a], idx[b:]]) for a, b in block_bounds(n, blocks)]


def jackknife_se(loo: Sequence[float]) -> float | None:
    """Delete-one-block jackknife standard error from the leave-one-block-out values."""
    vals = [float(v) for v in loo]
    b = len(vals)
    if b < 2 or not all(math.isfinite(v) for v in vals):
        return None
    mean = sum(vals) / b
    return math.sqrt((b - 1) / b * sum((v - mean) ** 2 for v in vals))


def jackknife(metric: Callable[[torch.Tensor], float], x: torch.Tensor,
              blocks: int | None) -> dict:
    """``{"value": metric(x), "se": ..., "blocks": [metric(x without block k)]}``; without
    blocks (None) only the value."""
    value = float(metric(x))
    if not blocks:
        return {"value": value, "se": None, "blocks": None}
    loo = [float(metric(x[i])) for i in leave_one_out(x.shape[0], blocks)]
    return {"value": value, "se": jackknife_se(loo), "blocks": loo}


def paired(a: float, a_blocks: Sequence[float], b: float, b_blocks: Sequence[float]) -> dict:
    """Paired jackknife test of a - b on the same seed blocks: ``{"diff", "se", "t", "p",
    "df"}`` (p two-sided, Student t with B - 1 degrees of freedom; p = 1 when the difference
    and its se are both 0, e.g. identical cells)."""
    from scipy import stats

    if len(a_blocks) != len(b_blocks) or len(a_blocks) < 2:
        raise ValueError("a paired test needs the same number (>= 2) of blocks on both sides")
    d = [float(x) - float(y) for x, y in zip(a_blocks, b_blocks)]
    diff = float(a) - float(b)
    se = jackknife_se(d)
    df = len(d) - 1
    if se is None:
        return {"diff": diff, "se": None, "t": None, "p": None, "df": df}
    if se == 0.0:
        return {"diff": diff, "se": 0.0, "t": None, "p": 1.0 if diff == 0.0 else 0.0, "df": df}
    t = diff / se
    return {"diff": diff, "se": se, "t": t, "p": float(2 * stats.t.sf(abs(t), df)), "df": df}


def rank_groups(entries: Sequence[dict], level: float = LEVEL) -> list[int]:
    """Rank groups of ``entries`` (each ``{"value": float, "blocks": [..]}``, lower is better),
    in the order given.  Group 1 holds the best entry and every entry not significantly worse
    than it (paired test, two-sided ``level``); the best entry not yet grouped opens the next
    group, and so on.  An entry without blocks cannot be tested: it gets its own group."""
    order = sorted(range(len(entries)), key=lambda i: entries[i]["value"])
    group = [0] * len(entries)
    g = 0
    for i in order:
        if group[i]:
            continue
        g += 1
        group[i] = g
        lead = entries[i]
        if not lead.get("blocks"):
            continue
        for j in order:
            e = entries[j]
            if group[j] or not e.get("blocks") or len(e["blocks"]) != len(lead["blocks"]):
                continue
            test = paired(e["value"], e["blocks"], lead["value"], lead["blocks"])
            if test["p"] is not None and test["p"] >= level:
                group[j] = g
    return group


# --------------------------------------------------------------------------------------------
# aliases: identical samples under two names
# --------------------------------------------------------------------------------------------

def fingerprint(x: torch.Tensor, dim: int = FINGERPRINT_DIM) -> list[float]:
    """``dim`` projections of the whole sample array on fixed random unit directions (float64),
    scaled so that a difference of RMS e between two arrays moves each projection by ~e.  Equal
    arrays give equal fingerprints; different ones differ (a difference orthogonal to all
    directions has probability 0)."""
    flat = x.detach().double().reshape(-1).cpu()
    g = torch.Generator().manual_seed(FINGERPRINT_SEED)
    out = []
    for _ in range(dim):
        r = torch.randn(flat.numel(), generator=g, dtype=torch.float64)
        out.append(float(flat @ r) / math.sqrt(flat.numel()))
    return out


def same_samples(fp_a: Sequence[float] | None, fp_b: Sequence[float] | None, scale: float,
                 low_precision: bool) -> bool:
    """Fingerprints equal within the alias tolerance relative to ``scale`` (the samples' RMS)."""
    if not fp_a or not fp_b or len(fp_a) != len(fp_b):
        return False
    tol = (ALIAS_RTOL_32 if low_precision else ALIAS_RTOL) * max(scale, 1e-300)
    return max(abs(a - b) for a, b in zip(fp_a, fp_b)) <= tol


def alias_groups(rows: Sequence[dict]) -> list[list[int]]:
    """Partition row indices into sets of aliases (identical samples, by fingerprint); each row
    needs ``x_fingerprint``, ``x_rms`` and ``state_dtype``.  Rows without a fingerprint are
    alone."""
    groups: list[list[int]] = []
    for i, r in enumerate(rows):
        for grp in groups:
            r0 = rows[grp[0]]
            low = not r.get("state_dtype") == r0.get("state_dtype") == "float64"
            if same_samples(r.get("x_fingerprint"), r0.get("x_fingerprint"),
                            float(r0.get("x_rms") or 0.0), low):
                grp.append(i)
                break
        else:
            groups.append([i])
    return groups


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd
