"""Solver registry: ``register_solver`` for built-ins, the ``samplerbench.solvers`` entry-point
group for plugins (value ``module:SolverClass``).  Unknown names list the valid ones; duplicate
names are an error."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math

from samplerbench.models.errors import UserError
from samplerbench.solvers.base import Solver

ENTRY_POINT_GROUP = "samplerbench.solvers"

_REGISTRY: dict[str, type[Solver]] = {}
_PLUGINS_LOADED = False


def register_solver(cls: type[Solver]) -> type[Solver]:
    """Class decorator: add a Solver subclass under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"{cls!r} is not a Solver subclass")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.kind not in ("ode", "sde"):
        raise ValueError(f"{cls.__name__}.kind must be 'ode' or 'sde', not {cls.kind!r}")
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"duplicate solver name {cls.name!r}: {other.__module__}.{other.__name__} "
                         f"and {cls.__module__}.{cls.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def load_plugins() -> None:
    """Import every solver advertised in the ``samplerbench.solvers`` entry-point group."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin is named, not swallowed
            raise UserError(f"solver plugin {ep.name!r}", ep.value,
                            hint=f"import failed: {type(exc).__name__}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Solver)):
            raise UserError(f"solver plugin {ep.name!r}", ep.value,
                            hint="the entry point must name a solvers.Solver subclass")
        register_solver(cls)


def available_solvers() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def solver_class(name: str) -> type[Solver]:
    load_plugins()
    if name not in _REGISTRY:
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
