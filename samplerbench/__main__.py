"""``python -m samplerbench`` (also ``torchrun -m samplerbench``) = the ``samplerbench`` command."""

import sys

from samplerbench.bench.cli import main

sys.exit(main())
