"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS for the vdisk handlers.

Placeholder: filled in by the copy manager work (issue 5).
"""
from __future__ import annotations


def vdisk_xcopy_exec_table() -> dict:
    """opcode -> exec function for the copy commands."""
    return {}
