"""samplerbench: benchmarks for the numerical solvers of diffusion and flow-matching models.

The three packages live in the repository's top-level folders and are imported under this
namespace, so that a user's own ``models/``, ``solvers/`` or ``bench/`` package never shadows
them: ``samplerbench.solvers`` (the ``Solver`` base, registry and the solver families),
``samplerbench.models`` (schedules, adapters, dynamics, the zoo) and ``samplerbench.bench``
(the harness and the CLI).  An install maps the folders through the build backend's package
directories; in a source checkout (no install) they are found beside this package.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

# A source checkout: bench/, models/, solvers/ sit beside this folder (an installed package has
# them inside it).  The marker file is specific, so nothing else is ever picked up this way.
_root = _Path(__file__).resolve().parent.parent
if (_root / "solvers" / "registry.py").is_file() and (_root / "bench" / "cli.py").is_file():
    __path__.append(str(_root))  # noqa: F821  (the package's own __path__)
del _Path, _root
