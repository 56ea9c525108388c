"""Solver registry, plugin entry points, parameter validation and Butcher-tableau checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

import samplerbench.solvers.registry as registry
from samplerbench.models.errors import UserError
from samplerbench.solvers import available_solvers, get_solver, register_solver, solver_class
from samplerbench.solvers.base import Solver
from samplerbench.solvers.classical.runge_kutta import Euler, RungeKutta
from samplerbench.solvers.tableaus import BOSH3, EULER, HEUN, MIDPOINT, RALSTON, RK4, ButcherTableau

CORE = ("euler", "heun", "midpoint", "ralston", "bosh3", "rk4", "ddim", "dopri5", "dopri8",
        "euler_ancestral", "euler_maruyama")


@pytest.fixture
def clean_registry():
    """Snapshot and restore the registry around a test that registers throwaway solvers."""
    saved = dict(registry._REGISTRY)
    loaded = registry._PLUGINS_LOADED
    yield registry._REGISTRY
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    registry._PLUGINS_LOADED = loaded


def test_core_solvers_registered():
    names = available_solvers()
    assert names == sorted(names)
    for n in CORE:
        assert n in names
        assert solver_class(n).name == n


def test_duplicate_name_with_other_class_rejected(clean_registry):
    @dataclass(frozen=True)
    class FakeEuler(Solver):
        name = "euler"

    with pytest.raises(ValueError, match="duplicate solver name 'euler'"):
        register_solver(FakeEuler)
    assert solver_class("euler") is Euler
    # registering the same class again is harmless (module re-import)
    assert register_solver(Euler) is Euler
    assert solver_class("euler") is Euler


def test_register_new_solver(clean_registry):
    @dataclass(frozen=True)
    class Halver(Solver):
        """x <- x / 2 per step (test double), 0 NFE."""
        name = "test_halver"
        stages = 0
        factor: float = 0.5

        def step(self, dynamics, t0, t1, x, state, noise):
            return self.factor * x, state

    assert register_solver(Halver) is Halver
    assert "test_halver" in available_solvers()
    s = get_solver("test_halver", factor=0.25)
    assert isinstance(s, Halver) and s.params() == {"factor": 0.25}


def test_register_rejects_malformed_classes(clean_registry):
    with pytest.raises(TypeError):
        register_solver(object)

    @dataclass(frozen=True)
    class Nameless(Solver):
        pass

    with pytest.raises(ValueError, match="no name"):
        register_solver(Nameless)

    @dataclass(frozen=True)
    class BadKind(Solver):
        name = "test_badkind"
        kind = "pde"

    with pytest.raises(ValueError, match="kind"):
        register_solver(BadKind)
    assert "test_badkind" not in registry._REGISTRY


def test_unknown_solver_lists_valid_names():
    with pytest.raises(UserError) as exc:
        get_solver("eulr")
    msg = str(exc.value)
    assert "'eulr'" in msg
    for n in CORE:
        assert n in msg
    assert exc.value.field == "solver" and set(CORE) <= set(exc.value.choices)


def test_unknown_parameter_named():
    with pytest.raises(UserError) as exc:
        get_solver("dopri5", rtl=1e-3)
    msg = str(exc.value)
    assert "rtl" in msg and "dopri5" in msg and "rtol" in msg and "atol" in msg
    with pytest.raises(UserError) as exc:
        get_solver("euler", eta=0.5)
    assert "eta" in str(exc.value) and "no parameters" in str(exc.value)


@pytest.mark.parametrize("value", (0.0, 2.0, -1e-3, "tight"))
def test_invalid_parameter_value_named(value):
    with pytest.raises(UserError) as exc:
        get_solver("dopri5", rtol=value)
    assert "rtol" in str(exc.value)


def test_solver_is_frozen_and_parameters_recorded():
    s = get_solver("dopri5", rtol=1e-7, atol=1e-9)
    assert s.params() == {"rtol": 1e-7, "atol": 1e-9}
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rtol = 1.0
    assert get_solver("dopri5", rtol=1e-7, atol=1e-9) == s


@pytest.mark.parametrize("name", available_solvers())
def test_capabilities_are_consistent(name):
    cls = solver_class(name)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    assert cls.kind in ("ode", "sde")
    if cls.adaptive:
        assert cls.stages is None
    else:
        assert isinstance(cls.stages, int) and cls.stages >= 1
    if cls.kind == "ode":
        assert cls.order is not None and cls.order > 0
    s = cls()
    assert set(s.params()) == {f.name for f in dataclasses.fields(cls)}


def test_rk_capabilities_come_from_tableaus():
    for tab in (EULER, HEUN, MIDPOINT, RALSTON, BOSH3, RK4):
        cls = solver_class(tab.name)
        assert issubclass(cls, RungeKutta) and cls.tableau is tab
        assert cls.order == tab.order and cls.stages == tab.stages


# ---------------------------------------------------------------------------------------------
# plugins (entry-point group samplerbench.solvers)
# ---------------------------------------------------------------------------------------------

class FakeEntryPoint:
    def __init__(self, name, value, obj=None, exc=None):
        self.name, self.value, self._obj, self._exc = name, value, obj, exc

    def load(self):
        if self._exc is not None:
            raise self._exc
        return self._obj


def test_plugin_entry_point_registers(clean_registry, monkeypatch):
    @dataclass(frozen=True)
    class PluginSolver(Solver):
        """Test plugin."""
        name = "test_plugin"

    eps = [FakeEntryPoint("test_plugin", "pkg.mod:PluginSolver", PluginSolver)]
    seen = {}

    def fake_entry_points(group):
        seen["group"] = group
        return eps

    monkeypatch.setattr(registry.importlib.metadata, "entry_points", fake_entry_points)
    registry._PLUGINS_LOADED = False
    assert "test_plugin" in available_solvers()
    assert seen["group"] == "samplerbench.solvers"
    assert solver_class("test_plugin") is PluginSolver


@pytest.mark.parametrize("ep,expect", [
    (FakeEntryPoint("broken", "pkg.mod:Missing", exc=ImportError("no module pkg")), "no module"),
    (FakeEntryPoint("notasolver", "pkg.mod:thing", obj=dict), "Solver subclass"),
])
def test_broken_plugin_named_and_skipped(clean_registry, monkeypatch, capsys, ep, expect):
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: [ep])
    registry._PLUGINS_LOADED = False
    assert "euler" in available_solvers()                # the built-ins keep working
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and ep.name in err[0] and ep.value in err[0] and expect in err[0]
    assert expect in registry.plugin_failure(ep.name)
    with pytest.raises(UserError, match=expect):         # asked for by name: why it is missing
        solver_class(ep.name)


def test_plugin_with_bad_capabilities_or_taken_name_skipped(clean_registry, monkeypatch, capsys):
    def plugin(name, **caps):
        return dataclass(frozen=True)(type("P", (Solver,), {"name": name, **caps}))

    eps = [FakeEntryPoint("pde", "m:A", plugin("pde", kind="pde")),
           FakeEntryPoint("neg", "m:B", plugin("neg", stages=-1)),
           FakeEntryPoint("ord", "m:C", plugin("ord", order="two")),
           FakeEntryPoint("euler", "m:D", plugin("euler")),
           FakeEntryPoint("first", "m:E", plugin("twin")),
           FakeEntryPoint("second", "m:F", plugin("twin"))]
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: eps)
    registry._PLUGINS_LOADED = False
    names = available_solvers()
    assert "twin" in names and solver_class("twin") is eps[4].load()
    assert solver_class("euler") is Euler
    assert not {"pde", "neg", "ord"} & set(names)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5
    for line, why in zip(err, ["'pde'", "stages", "order", "duplicate solver name 'euler'",
                               "plugin entry point 'first'"]):
        assert why in line, line


# ---------------------------------------------------------------------------------------------
# Butcher tableaus
# ---------------------------------------------------------------------------------------------

def test_tableau_rejects_stage_count_mismatch():
    with pytest.raises(ValueError, match="stages"):
        ButcherTableau("bad", (0.0, 1.0), ((), (1.0,)), (1.0,), 1)
    with pytest.raises(ValueError, match="stages"):
        ButcherTableau("bad", (0.0, 1.0), ((),), (0.5, 0.5), 1)


def test_tableau_rejects_implicit_rows():
    with pytest.raises(ValueError, match="row 1"):
        ButcherTableau("bad", (0.0, 1.0), ((), (0.5, 0.5)), (0.5, 0.5), 2)
    with pytest.raises(ValueError, match="row 0"):
        ButcherTableau("bad", (0.0, 1.0), ((0.0,), (1.0,)), (0.5, 0.5), 2)


def test_tableau_rejects_rows_not_summing_to_c():
    with pytest.raises(ValueError, match=r"row 1 of a sums to 0.5"):
        ButcherTableau("bad", (0.0, 1.0), ((), (0.5,)), (0.5, 0.5), 2)


def test_tableau_rejects_weights_not_summing_to_one():
    with pytest.raises(ValueError, match="b sums to"):
        ButcherTableau("bad", (0.0, 0.5), ((), (0.5,)), (0.5, 0.6), 2)


def _order_conditions(tab):
    """(value, target) pairs of the classical order conditions of orders 1..4."""
    b, c = tab.b, tab.c
    A = [list(row) + [0.0] * (len(c) - len(row)) for row in tab.a]
    s = range(len(c))
    Ac = [sum(A[i][j] * c[j] for j in s) for i in s]
    Ac2 = [sum(A[i][j] * c[j] ** 2 for j in s) for i in s]
    AAc = [sum(A[i][j] * Ac[j] for j in s) for i in s]
    cond = {
        1: [(sum(b), 1.0)],
        2: [(sum(b[i] * c[i] for i in s), 1 / 2)],
        3: [(sum(b[i] * c[i] ** 2 for i in s), 1 / 3), (sum(b[i] * Ac[i] for i in s), 1 / 6)],
        4: [(sum(b[i] * c[i] ** 3 for i in s), 1 / 4),
            (sum(b[i] * c[i] * Ac[i] for i in s), 1 / 8),
            (sum(b[i] * Ac2[i] for i in s), 1 / 12),
            (sum(b[i] * AAc[i] for i in s), 1 / 24)],
    }
    return cond


@pytest.mark.parametrize("tab", (EULER, HEUN, MIDPOINT, RALSTON, BOSH3, RK4),
                         ids=lambda t: t.name)
def test_builtin_tableaus_satisfy_order_conditions(tab):
    cond = _order_conditions(tab)
    for p in range(1, tab.order + 1):
        for got, want in cond[p]:
            assert abs(got - want) < 1e-14, f"{tab.name}: order-{p} condition {got} != {want}"
    if tab.order < 4:
        # the declared order is the highest: some condition of order + 1 fails
        assert any(abs(got - want) > 1e-3 for got, want in cond[tab.order + 1])
    assert tab.stages == len(tab.c) and all(isinstance(v, float) for v in tab.b)
