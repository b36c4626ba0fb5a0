"""`python -m tools.sim` is `uscst-sim` (tools/sim/cli.py)."""
from __future__ import annotations

import sys

from tools.sim.cli import main

sys.exit(main())
