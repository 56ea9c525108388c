"""NVlabs EDM network pickles (``edm:FILE.pkl?trust_code=1``), loaded only on an explicit opt-in.

A network snapshot of NVlabs/edm (``network-snapshot-*.pkl``, the released ``edm-*.pkl``) is a
plain pickle of ``{"ema": net, "loss_fn": ..., "augment_pipe": ..., "dataset_kwargs": {...}}``.
Its classes are decorated with ``torch_utils.persistence.persistent_class``, so each object is
pickled as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {"type": "class", "version": 6, "module_src": <the whole source of the module that
defined the class>, "class_name": ..., "state": <the object's __dict__>}``; unpickling executes
that source (``exec``) in a new module and rebuilds the object from the class it defines.  Loading
such a file therefore **runs the code it carries**, which is why samplerbench refuses it unless
asked (``trust_code=1``), and then prints a warning.

``torch_utils`` need not be importable: while the file is read, :data:`STAND_INS` take the place
of ``torch_utils``, ``torch_utils.persistence`` (this module's :func:`persistent_class` and
:func:`_reconstruct_persistent_obj`) and an empty ``torch_utils.misc`` (imported by the pickled
``augment.py``; the network itself does not use it), and ``dnnlib.EasyDict`` where ``dnnlib`` is
absent.  Everything else the embedded sources import (``numpy``, ``torch``) must be installed.
The same stand-in writes pickles in that layout (:func:`dump_network`), for tests and examples.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import sys
import types
from pathlib import Path

from samplerbench.models.errors import UserError

FORMAT_VERSION = 6          # torch_utils.persistence._version of every NVlabs EDM release
PERSISTENCE = "torch_utils.persistence"

_module_of_src: dict[str, types.ModuleType] = {}     # embedded source -> the module it made
_src_of_module: dict[str, str] = {}                  # module name -> its source


class EasyDict(dict):
    """``dnnlib.EasyDict``: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def _module_from_src(src: str) -> types.ModuleType:
    """The module that ``src`` defines, executed once per distinct source (copies of a network
    reuse its classes)."""
    module = _module_of_src.get(src)
    if module is None:
        name = "_samplerbench_edm_" + hashlib.sha1(src.encode()).hexdigest()[:16]
        module = types.ModuleType(name)
        _src_of_module[name] = src
        sys.modules[name] = module
        try:
            exec(compile(src, f"<{name}: source embedded in an EDM pickle>", "exec"),
                 module.__dict__)
        except BaseException:
            sys.modules.pop(name, None)
            _src_of_module.pop(name, None)
            raise
        _module_of_src[src] = module
    return module


def persistent_class(cls: type) -> type:
    """Stand-in for ``torch_utils.persistence.persistent_class``: instances of the returned
    subclass pickle as ``_reconstruct_persistent_obj(meta)`` with their module's source."""
    if getattr(cls, "_persistent_src", None) is not None and cls.__name__ == cls._persistent_name:
        return cls
    src = _src_of_module.get(cls.__module__)
    if src is None:
        import inspect

        src = inspect.getsource(sys.modules[cls.__module__])
        _src_of_module[cls.__module__] = src
    name = cls.__name__

    def __reduce__(self):
        fields = list(super(persistent, self).__reduce__()) + [None] * 3
        meta = {"type": "class", "version": FORMAT_VERSION, "module_src": src,
                "class_name": name, "state": fields[2]}
        return (_reconstruct_persistent_obj, (meta,), None, fields[3], fields[4])

    persistent = type(name, (cls,), {"__reduce__": __reduce__, "_persistent_src": src,
                                     "_persistent_name": name, "__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__})
    return persistent


def _reconstruct_persistent_obj(meta: dict):
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: executes the
    embedded module source and rebuilds the object from its class and state."""
    if meta.get("type") != "class" or meta.get("version") != FORMAT_VERSION:
        raise pickle.UnpicklingError(
            f"unsupported torch_utils.persistence object: type {meta.get('type')!r}, version "
            f"{meta.get('version')!r} (expected 'class', {FORMAT_VERSION})")
    module = _module_from_src(meta["module_src"])
    cls = persistent_class(module.__dict__[meta["class_name"]])
    obj = cls.__new__(cls)
    state = EasyDict(meta.get("state") or {})
    if callable(getattr(obj, "__setstate__", None)):
        obj.__setstate__(state)
    else:
        obj.__dict__.update(state)
    return obj


_reconstruct_persistent_obj.__module__ = PERSISTENCE   # what the pickles name


def _stand_in_modules() -> dict[str, types.ModuleType]:
    persistence = types.ModuleType(PERSISTENCE)
    persistence.persistent_class = persistent_class
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    persistence._version = FORMAT_VERSION
    persistence.is_persistent = lambda obj: hasattr(obj, "_persistent_src")
    persistence.import_hook = lambda hook: hook
    misc = types.ModuleType("torch_utils.misc")
    package = types.ModuleType("torch_utils")
    package.__path__ = []
    package.persistence, package.misc = persistence, misc
    return {"torch_utils": package, PERSISTENCE: persistence, "torch_utils.misc": misc}


@contextlib.contextmanager
def stand_ins():
    """``torch_utils`` (+ ``persistence``, ``misc``) in ``sys.modules`` for the block only."""
    mods = _stand_in_modules()
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name == "EasyDict" and module in ("dnnlib", "dnnlib.util"):
            try:
                return super().find_class(module, name)
            except ImportError:
                return EasyDict
        return super().find_class(module, name)


def load_network(path: str | Path, key: str = "ema"):
    """``pickle.load(open(path, "rb"))[key]`` of an NVlabs EDM network pickle.  **Runs the code
    the file carries**; call it only for files you trust.  Errors are ``UserError``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError("edm pickle", str(path), hint="no such file")
    try:
        with stand_ins(), open(path, "rb") as f:
            data = _Unpickler(f).load()
    except SystemExit as exc:
        raise UserError("edm pickle", str(path), hint=f"unpickling it called "
                        f"sys.exit({exc.code!r})") from None
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        raise UserError("edm pickle", str(path), hint=f"cannot unpickle it as an NVlabs EDM "
                        f"network pickle ({type(exc).__name__}: {text})") from None
    if not isinstance(data, dict) or key not in data:
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise UserError("edm pickle", str(path), hint=f"expected a dict with {key!r} (an NVlabs "
                        f"EDM network pickle: ema, loss_fn, ...); found {found}")
    net = data[key]
    if not callable(net):
        raise UserError("edm pickle", str(path), hint=f"{key!r} is a {type(net).__name__}, not "
                        "a network net(x, sigma, class_labels)")
    return net


def dump_network(path: str | Path, module_src: str, class_name: str, *args, extra=None,
                 **kwargs):
    """Write ``{"ema": CLASS(*args, **kwargs), **extra}`` as NVlabs EDM does, where CLASS is
    defined (and decorated with ``persistence.persistent_class``) in ``module_src``.  Executes
    ``module_src``.  Returns the network that was pickled."""
    with stand_ins():
        net = _module_from_src(module_src).__dict__[class_name](*args, **kwargs)
        net.eval().requires_grad_(False)
        with open(path, "wb") as f:
            pickle.dump({"ema": net, **(extra or {})}, f)
    return net
