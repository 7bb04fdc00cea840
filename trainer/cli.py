"""Trainer subcommands: `diffar train` and `diffar data ...`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    _register_train(sub)
    _register_data(sub)


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an AR or MDM model from a TrainConfig",
        description="Train from a TrainConfig (YAML or JSON). Runs as one process or under "
        "torchrun (WORLD_SIZE/RANK/MASTER_ADDR from the environment, as a PyTorchJob sets them). "
        "Resumes from the newest checkpoint in checkpoint.dir.",
    )
    p.add_argument("--config", required=True, help="TrainConfig file (.yaml/.yml/.json)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved run size and exit")
    p.add_argument("--json", action="store_true", help="with --dry-run: print JSON")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set epochs=4 --set optim.lr=1e-3 (repeatable)",
    )
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from diffar.trainer.config import apply_overrides, load_config

    cfg = apply_overrides(load_config(args.config), args.set)
    if args.dry_run:
        from diffar.trainer.plan import format_plan, plan_run

        print(format_plan(plan_run(cfg), as_json=args.json))
        return 0
    from diffar.trainer.train import train

    train(cfg)
    return 0


def _register_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare and inspect token shard datasets")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    del data_sub  # `data prepare` / `data inspect` are registered here by the data pipeline
