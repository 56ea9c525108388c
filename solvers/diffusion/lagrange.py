"""Integrals of Lagrange basis polynomials: the coefficients of Adams-type multistep methods
(variable-step Adams-Bashforth, DEIS) computed exactly from the actual node positions."""

from __future__ import annotations

import math
from typing import Sequence

from numpy.polynomial import polynomial as P


def basis_integrals(nodes: Sequence[float], a: float, b: float,
                    exp_weight: bool = False) -> list[float]:
    """[int_a^b L_j(s) w(s) ds for each node j], L_j the Lagrange basis polynomial on ``nodes``
    (L_j(nodes[k]) = delta_jk) and w(s) = 1, or e^s with ``exp_weight``.

    Exact (closed form): int p(s) e^s ds = e^s sum_m (-1)^m p^(m)(s).  Callers shift and scale
    the variable so that nodes and limits are O(1) -- the formulas are then well conditioned."""
    nodes = [float(v) for v in nodes]
    out = []
    for j, vj in enumerate(nodes):
        others = [v for k, v in enumerate(nodes) if k != j]
        p = P.polyfromroots(others) if others else P.polyone
        p = p / P.polyval(vj, p)
        if exp_weight:
            q, d, sign = p.copy(), p, -1.0
            for _ in range(len(others)):
                d = P.polyder(d)
                q = P.polyadd(q, sign * d)
                sign = -sign
            out.append(float(math.exp(b) * P.polyval(b, q) - math.exp(a) * P.polyval(a, q)))
        else:
            q = P.polyint(p)
            out.append(float(P.polyval(b, q) - P.polyval(a, q)))
    return out
