"""Shared pytest configuration for the uscst test-suite.

Its presence makes pytest (default "prepend" import mode) put tests/ on
sys.path, so any test in any subfolder can `from initiator import Initiator`
(the independent iSCSI initiator in tests/initiator.py).

Keep it minimal: only fixtures several test folders share belong here.
"""
