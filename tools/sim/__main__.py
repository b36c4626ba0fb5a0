"""`python -m tools.sim` is `uscst-sim` (tools/sim/cli.py)."""
from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
