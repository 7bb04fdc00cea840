"""The `diffar` command: one entry point, subcommands contributed by each package.

Each package's `cli.register(subparsers)` adds its commands; handlers import heavy modules
(torch, kopf, boto3) lazily so `diffar --help` and the operator image stay light.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from diffar.trainer.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from diffar.evaluator import cli as evaluator_cli
    from diffar.operator import commands as operator_cli
    from diffar.operator import study_fit
    from diffar.operator.local import cli as local_cli
    from diffar.trainer import cli as trainer_cli

    parser = argparse.ArgumentParser(
        prog="diffar",
        description="Train and compare masked-diffusion and autoregressive LMs on repeated data.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (trainer_cli, evaluator_cli, operator_cli, local_cli, study_fit):
        module.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffar")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        print(f"diffar {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffar {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `diffar ... | head -1`: the reader left; what it read is all it wanted. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
