"""The `diffar` command: one entry point, subcommands contributed by each package.

Each package's `cli.register(subparsers)` adds its commands; handlers import heavy modules
(torch, kopf, boto3) lazily so `diffar --help` and the operator image stay light.
"""

from __future__ import annotations

import argparse
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (trainer_cli, evaluator_cli, operator_cli, local_cli, study_fit):
        module.register(sub)
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
