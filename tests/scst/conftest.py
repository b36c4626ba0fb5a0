"""Fixtures of the SCST core tests: kernel, the booted emulated kernel with
the core and vdisk loaded (tests/vdisk/conftest.py)."""
from tests.vdisk.conftest import kernel  # noqa: F401  (a fixture: pytest finds it here by name)
