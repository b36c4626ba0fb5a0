"""Fixtures of the sim tests: sim_server (tcp_target.py), one real uscstd
per test module for the scenarios run over TCP."""
from tcp_target import sim_server  # noqa: F401  (a fixture: pytest finds it here by name)
