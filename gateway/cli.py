"""``gateway`` command line. Each command family lives in its own module that exposes
``add_commands(subparsers)``; this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway.exceptions import ConfigurationError

COMMAND_MODULES = (
    "gateway.runner",  # run, serve, writer, migrate, sites
    "gateway.demo",  # demo
    "gateway.status",  # status
    "gateway.dlq",  # dlq list|show|replay|drop
    "gateway.auth",  # token
    "gateway.chaos",  # chaos
    "gateway.capacity",  # capacity
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="Intake gateway for mass online registration."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except ConfigurationError as exc:  # an operator's setting: say why, no traceback
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
