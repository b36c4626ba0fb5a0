"""uscstadmin: manage a running uscstd (the management issue adds the
subcommands; this version answers --help and --version)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="uscstadmin",
                                description="Manage a running uscstd target (scstadmin-like).")
    p.add_argument("--version", action="version", version="uscstadmin 0.1.0")
    p.parse_args(argv)
    p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
