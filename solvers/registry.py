"""Solver registry: ``register_solver`` for built-ins, the ``samplerbench.solvers`` entry-point
group for plugins (value ``module:SolverClass``).  Unknown names list the valid ones; duplicate
names are an error."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import sys

from samplerbench.models.errors import UserError
from samplerbench.solvers.base import Solver

ENTRY_POINT_GROUP = "samplerbench.solvers"

_REGISTRY: dict[str, type[Solver]] = {}
_PLUGINS_LOADED = False
_FAILED: dict[str, str] = {}      # entry point (or solver) name -> why it was skipped
_PLUGIN_OF: dict[str, str] = {}   # solver name -> the entry point that registered it


def capability_problem(cls) -> str | None:
    """Why ``cls`` cannot be registered as a solver (capabilities are data, checked once), or
    None."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        return f"{cls!r} is not a samplerbench.solvers.Solver subclass"
    if not isinstance(cls.name, str) or not cls.name:
        return f"{cls.__name__} has no name"
    if cls.kind not in ("ode", "sde"):
        return f"{cls.__name__}.kind must be 'ode' or 'sde', not {cls.kind!r}"
    if cls.stages is not None and (isinstance(cls.stages, bool) or not isinstance(cls.stages, int)
                                   or cls.stages < 0):
        return (f"{cls.__name__}.stages must be None or an integer >= 0 (model calls per step), "
                f"not {cls.stages!r}")
    for attr in ("order", "strong_order", "weak_order"):
        v = getattr(cls, attr)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not 0 < v < math.inf):
            return f"{cls.__name__}.{attr} must be None or a positive number, not {v!r}"
    for attr in ("adaptive", "stochastic"):
        if not isinstance(getattr(cls, attr), bool):
            return f"{cls.__name__}.{attr} must be true or false, not {getattr(cls, attr)!r}"
    if not isinstance(cls.reference, str):
        return f"{cls.__name__}.reference must be a string, not {cls.reference!r}"
    return None


def register_solver(cls: type[Solver]) -> type[Solver]:
    """Class decorator: add a Solver subclass under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"{cls!r} is not a Solver subclass")
    problem = capability_problem(cls)
    if problem:
        raise ValueError(problem)
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"duplicate solver name {cls.name!r}: {other.__module__}.{other.__name__} "
                         f"and {cls.__module__}.{cls.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def _plugin_problem(ep) -> tuple[str | None, str | None]:
    """(solver name, why the entry point ``ep`` cannot be registered) -- (name, None) when it
    registered.  Nothing a plugin does at import escapes: a broken plugin costs only itself."""
    try:
        cls = ep.load()
    except BaseException as exc:          # SystemExit / KeyboardInterrupt at import included
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None, f"import failed: {type(exc).__name__}: {exc}".strip()
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        return None, "the entry point must name a samplerbench.solvers.Solver subclass"
    problem = capability_problem(cls)
    if problem:
        return getattr(cls, "name", None) if isinstance(getattr(cls, "name", None), str) \
            else None, f"bad capabilities: {problem}"
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        owner = _PLUGIN_OF.get(cls.name)
        what = (f"plugin entry point {owner!r}" if owner else
                f"the built-in {other.__module__}.{other.__name__}")
        return cls.name, f"duplicate solver name {cls.name!r}: already taken by {what}"
    _REGISTRY[cls.name] = cls
    return cls.name, None


def load_plugins() -> None:
    """Register every solver advertised in the ``samplerbench.solvers`` entry-point group.

    Plugins are isolated: one that fails to import, is not a Solver subclass, declares invalid
    capabilities or reuses a taken name (a built-in's, or an earlier plugin's) is skipped with
    one warning line on stderr naming the entry point and why; the built-ins and the other
    plugins keep working, and :func:`plugin_failure` tells ``check-solver`` what went wrong."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    try:
        eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:                 # a corrupt dist-info elsewhere on the path
        _warn(f"solver plugins not loaded: reading entry points failed: {exc}")
        return
    for ep in eps:
        name, why = _plugin_problem(ep)
        if why is None:
            _PLUGIN_OF[name] = ep.name
            continue
        value = getattr(ep, "value", "?")
        message = f"solver plugin {ep.name!r} ({value}) skipped: {why}"
        _FAILED[ep.name] = message
        if name and name != ep.name and name not in _REGISTRY:
            _FAILED.setdefault(name, message)
        _warn(message)


def _warn(message: str) -> None:
    sys.stderr.write(f"samplerbench: warning: {message}\n")
    sys.stderr.flush()


def plugin_failure(name: str) -> str | None:
    """The one-line reason the plugin entry point (or solver) ``name`` was skipped, or None."""
    load_plugins()
    return None if name in _REGISTRY else _FAILED.get(name)


def available_solvers() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def solver_class(name: str) -> type[Solver]:
    load_plugins()
    if name not in _REGISTRY:
        if name in _FAILED:
            raise UserError("solver", name, hint=_FAILED[name])
        raise UserError("solver", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def get_solver(name: str, **params) -> Solver:
    """Instantiate a registered solver; unknown or invalid parameters are named."""
    cls = solver_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in params.items():
        if key not in fields:
            raise UserError(f"solver parameter of {name!r}", key,
                            sorted(fields) or ["(this solver takes no parameters)"])
        _check_type(name, cls, fields[key], value)
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise UserError(f"solver parameters of {name!r}", params, hint=str(exc)) from None


def _check_type(name: str, cls, f: dataclasses.Field, value) -> None:
    """A parameter's value against its declared type (int, float, bool or str), so that a wrong
    one is named here rather than failing inside the solver's own checks.  Floats must be finite
    unless the class lists the field in ``infinite_ok`` (e.g. EDM's S_max = inf)."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    field = f"solver parameter {f.name!r} of {name!r}"
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(field, value, hint="a number")
        if math.isnan(value) or (math.isinf(value) and f.name not in cls.infinite_ok):
            raise UserError(field, value, hint="a finite number")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(field, value, hint="an integer")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise UserError(field, value, ["true", "false"])
    elif kind == "str":
        if not isinstance(value, str):
            raise UserError(field, value, hint="a string")
