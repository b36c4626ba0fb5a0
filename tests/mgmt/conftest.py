"""Fixtures for the management tests (defined in mgmt_support.py)."""
from mgmt_support import daemon  # noqa: F401  (pytest finds fixtures here)
