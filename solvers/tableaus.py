"""Explicit Runge-Kutta methods as data: frozen, self-checking Butcher tableaus."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F


@dataclass(frozen=True)
class ButcherTableau:
    """c (nodes), a (strictly lower-triangular rows), b (weights) of an explicit RK method."""

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int

    def __post_init__(self):
        s = len(self.c)
        if len(self.b) != s or len(self.a) != s:
            raise ValueError(f"{self.name}: c, a, b must have {s} stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"{self.name}: row {i} of a must have {i} entries (explicit RK)")
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"{self.name}: row {i} of a sums to {sum(row)}, c[{i}] = {self.c[i]}")
        if abs(sum(self.b) - 1.0) > 1e-12:
            raise ValueError(f"{self.name}: b sums to {sum(self.b)}, not 1")

    @property
    def stages(self) -> int:
        return len(self.c)


def _t(name, c, a, b, order):
    return ButcherTableau(name, tuple(float(v) for v in c),
                          tuple(tuple(float(v) for v in row) for row in a),
                          tuple(float(v) for v in b), order)


EULER = _t("euler", [0], [[]], [1], 1)
HEUN = _t("heun", [0, 1], [[], [1]], [F(1, 2), F(1, 2)], 2)
MIDPOINT = _t("midpoint", [0, F(1, 2)], [[], [F(1, 2)]], [0, 1], 2)
RALSTON = _t("ralston", [0, F(2, 3)], [[], [F(2, 3)]], [F(1, 4), F(3, 4)], 2)
RK4 = _t("rk4", [0, F(1, 2), F(1, 2), 1], [[], [F(1, 2)], [0, F(1, 2)], [0, 0, 1]],
         [F(1, 6), F(1, 3), F(1, 3), F(1, 6)], 4)
BOSH3 = _t("bosh3", [0, F(1, 2), F(3, 4)], [[], [F(1, 2)], [0, F(3, 4)]],
           [F(2, 9), F(1, 3), F(4, 9)], 3)
