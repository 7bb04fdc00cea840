"""Evaluator subcommands (`diffar eval`, `diffar fit`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    del sub  # evaluator commands arrive with the evaluator issue
