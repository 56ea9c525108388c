"""`check-solver` over the whole registry: every built-in solver is conformant (measured order
within ±0.35 of its declared order on the 64-D mixture, counted NFE = declared, deterministic,
batch- and shape-invariant, runs on a flow model from t = 1)."""

from __future__ import annotations

import pytest

from samplerbench.bench.conformance import ORDER_TOLERANCE, check_solver
from samplerbench.solvers.registry import available_solvers

BUILTINS = available_solvers()


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_solver_is_conformant(name):
    rep = check_solver(name)
    assert rep.passed, rep.format()
    order = next(c for c in rep.checks if c.name == "order")
    if order.passed is not None:
        assert "measured" in order.detail


@pytest.mark.parametrize("name,params", [("unipc_bh2", {"solver_order": 1}),
                                         ("deis", {"solver_order": 3}),
                                         ("lms", {"solver_order": 2})])
def test_declared_order_follows_solver_order(name, params):
    rep = check_solver(name, params)
    assert rep.passed, rep.format()


def test_a_wrong_declared_order_is_caught():
    """A solver that claims order 2 but is Euler fails the check."""
    from dataclasses import dataclass

    from samplerbench.solvers.classical.runge_kutta import Euler

    @dataclass(frozen=True)
    class Liar(Euler):
        order = 2.0

    import samplerbench.solvers.registry as reg

    reg._REGISTRY["liar_euler_test"] = Liar
    try:
        rep = check_solver("liar_euler_test")
    finally:
        del reg._REGISTRY["liar_euler_test"]
    order = next(c for c in rep.checks if c.name == "order")
    assert order.passed is False and not rep.passed
    assert ORDER_TOLERANCE == 0.35


def test_check_solver_cli_exit_codes():
    from samplerbench.bench.cli import main

    assert main(["check-solver", "heun"]) == 0
    assert main(["check-solver", "nope"]) == 2
