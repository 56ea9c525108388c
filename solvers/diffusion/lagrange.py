"""Integrals of Lagrange basis polynomials: the coefficients of Adams-type multistep methods
(variable-step Adams-Bashforth, DEIS) computed exactly from the actual node positions.

Pure Python on float64: the polynomials have degree <= 3 or so, where numpy's per-call overhead
(polyfromroots / polyval / polyint: ~0.5 ms per call of this function) cost more than a solver step
on a cheap model; the straight-line formulas for the common sizes take a few microseconds."""

from __future__ import annotations

import math
from typing import Sequence


def basis_integrals(nodes: Sequence[float], a: float, b: float,
                    exp_weight: bool = False) -> list[float]:
    """[int_a^b L_j(s) w(s) ds for each node j], L_j the Lagrange basis polynomial on ``nodes``
    (L_j(nodes[k]) = delta_jk) and w(s) = 1, or e^s with ``exp_weight``.

    Exact (closed form): int p(s) e^s ds = e^s sum_m (-1)^m p^(m)(s).  Callers shift and scale
    the variable so that nodes and limits are O(1) -- the formulas are then well conditioned.
    The sizes the solvers use (up to 4 nodes, up to 3 with the exponential weight) take
    straight-line formulas; other sizes the general polynomial arithmetic below."""
    n = len(nodes)
    if n <= (3 if exp_weight else 4):
        return _small(nodes, a, b, exp_weight)
    return _general(nodes, a, b, exp_weight)


def _small(nodes, a: float, b: float, exp_weight: bool) -> list[float]:
    """:func:`basis_integrals` for n <= 4 nodes (n <= 3 with the exponential weight): the
    numerator polynomial prod_{k != j}(s - r_k) from its elementary symmetric functions."""
    nodes = [float(v) for v in nodes]
    a, b = float(a), float(b)
    n = len(nodes)
    out = []
    if exp_weight:
        ea, eb = math.exp(a), math.exp(b)
        for j in range(n):
            vj = nodes[j]
            o = nodes[:j] + nodes[j + 1:]
            if n == 1:
                out.append(eb - ea)
            elif n == 2:
                (r,) = o
                inv = 1.0 / (vj - r)
                # p = (s - r) / (v_j - r);  q = p - p'
                q0, q1 = (-r - 1.0) * inv, inv
                out.append(eb * (q1 * b + q0) - ea * (q1 * a + q0))
            else:
                r1, r2 = o
                inv = 1.0 / ((vj - r1) * (vj - r2))
                # p = (s^2 - (r1 + r2) s + r1 r2) inv;  q = p - p' + p''
                q2 = inv
                q1 = -(r1 + r2) * inv - 2.0 * q2
                q0 = r1 * r2 * inv - q1
                out.append(eb * ((q2 * b + q1) * b + q0) - ea * ((q2 * a + q1) * a + q0))
        return out
    # moments int_a^b s^i ds, i < n
    m = []
    pa, pb = a, b
    for i in range(1, n + 1):
        m.append((pb - pa) / i)
        pa *= a
        pb *= b
    for j in range(n):
        vj = nodes[j]
        o = nodes[:j] + nodes[j + 1:]
        if n == 1:
            out.append(m[0])
            continue
        if n == 2:
            (r,) = o
            num = m[1] - r * m[0]
            norm = vj - r
        elif n == 3:
            r1, r2 = o
            num = m[2] - (r1 + r2) * m[1] + r1 * r2 * m[0]
            norm = (vj - r1) * (vj - r2)
        else:
            r1, r2, r3 = o
            num = (m[3] - (r1 + r2 + r3) * m[2] + (r1 * r2 + r1 * r3 + r2 * r3) * m[1]
                   - r1 * r2 * r3 * m[0])
            norm = (vj - r1) * (vj - r2) * (vj - r3)
        out.append(num / norm)
    return out


def _general(nodes, a: float, b: float, exp_weight: bool) -> list[float]:
    """:func:`basis_integrals` for any number of nodes: the coefficients of each L_j by repeated
    multiplication with (s - r_k), then the closed-form integral by Horner's rule."""
    nodes = [float(v) for v in nodes]
    a, b = float(a), float(b)
    ea, eb = (math.exp(a), math.exp(b)) if exp_weight else (1.0, 1.0)
    n = len(nodes)
    out = []
    for j in range(n):
        vj = nodes[j]
        # p = prod_{k != j} (s - v_k) / (v_j - v_k), coefficients lowest degree first
        p = [1.0]
        norm = 1.0
        for k in range(n):
            if k != j:
                r = nodes[k]
                norm *= vj - r
                q = [0.0] * (len(p) + 1)
                for i in range(len(p)):
                    c = p[i]
                    q[i + 1] += c
                    q[i] -= r * c
                p = q
        p = [c / norm for c in p]
        if exp_weight:
            # q = p - p' + p'' - ... (so that (e^s q)' = e^s p), by Horner-like accumulation
            # from the top: q_i = p_i - (i + 1) q_{i+1}
            q = [0.0] * n
            acc = 0.0
            for i in range(n - 1, -1, -1):
                acc = p[i] - (i + 1) * acc
                q[i] = acc
            va = vb = 0.0
            for c in reversed(q):
                va = va * a + c
                vb = vb * b + c
            out.append(eb * vb - ea * va)
        else:
            va = vb = 0.0
            for i in range(n - 1, -1, -1):
                c = p[i] / (i + 1)
                va = (va + c) * a
                vb = (vb + c) * b
            out.append(vb - va)
    return out

