"""Operator subcommands (`diffar crds`, `diffar render`, `diffar operator`, `diffar run`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    del sub  # operator commands arrive with the operator issue
