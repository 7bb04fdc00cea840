"""The package layout the design card asks for, and the CLI's entry point."""

import importlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_top_level_folders_exist():
    for name in (
        "operator",
        "trainer",
        "evaluator",
        "tests",
        "pyproject.toml",
        "Makefile",
        ".ci/run",
    ):
        assert (REPO / name).exists(), name


def test_stdlib_operator_is_not_shadowed():
    import operator

    assert operator.add(2, 3) == 5
    assert importlib.import_module("diffar.operator").__name__ == "diffar.operator"
    assert importlib.import_module("diffar.trainer.model")
    assert importlib.import_module("diffar.evaluator")


def test_diffar_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for command in ("train", "data"):
        assert command in out.stdout
