"""Misuse of every subcommand ends in one line and a non-zero exit: no traceback, no hang."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffar.operator.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def binary(tmp_path) -> Path:
    path = tmp_path / "blob.yaml"  # a text-file name, binary content
    path.write_bytes(bytes(range(256)) * 8)
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--config", "{}"],
        ["run", "{}", "--local"],
        ["render", "{}"],
        ["eval", "--config", "{}"],
        ["fit", "{}"],
    ],
)
def test_binary_file_is_one_line(capsys, binary, argv):
    err = one_line_error(capsys, [a.replace("{}", str(binary)) for a in argv])
    assert f"{binary} is a binary file" in err


def test_run_manifest_given_to_train_says_what_to_use(capsys):
    err = one_line_error(capsys, ["train", "--config", str(REPO / "examples/ar-100m.yaml")])
    assert "is a run manifest (ARRun), not a TrainConfig" in err
    assert "diffar run" in err and "--local" in err and "diffar render" in err


def test_eval_of_a_file_that_is_not_a_model(capsys, tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not a pickle at all\n" * 10)
    err = one_line_error(capsys, ["eval", "--model", str(fake), "--tasks", "none"])
    assert f"{fake} is not a diffar model export" in err


def test_eval_of_an_unknown_task_fails_at_config_load(capsys, tmp_path):
    # Before the model is even looked for: the config is checked first.
    err = one_line_error(capsys, ["eval", "--model", str(tmp_path / "none"), "--tasks", "race"])
    assert "unknown task 'race'" in err


def test_data_prepare_refuses_a_binary_input(capsys, binary, tmp_path):
    argv = ["data", "prepare", str(binary), "--out", str(tmp_path / "ds")]
    err = one_line_error(capsys, [*argv, "--unique-tokens", "100", "--quiet"])
    assert "is a binary file, not text" in err
    assert not (tmp_path / "ds" / "train" / "manifest.json").exists()


def test_fit_with_too_few_points_says_what_grid_it_needs(capsys, tmp_path):
    csv = tmp_path / "two.csv"
    csv.write_text(
        "objective,params,unique_tokens,epochs,loss\n"
        "ar,1e6,25000,10,5.0\nar,1e6,25000,20,4.8\n"
        "mdm,1e6,25000,10,5.5\nmdm,1e6,25000,20,5.2\nmdm,1e6,25000,40,5.1\nmdm,1e6,25000,60,5.05\n"
    )
    err = one_line_error(capsys, ["fit", str(csv)])
    assert "ar: 2 point(s) cannot fit 7 free constants" in err
    assert "two or more model sizes" in err and "--paper-constants" in err
    # With the paper's constants the MDM fit goes ahead (4 points for E, A, B); AR is reported.
    assert main(["fit", str(csv), "--paper-constants", "--bootstrap", "2"]) == 0
    out = capsys.readouterr()
    assert "mdm: 4 points" in out.out and "R_D_star  500 (fixed)" in out.out
    assert "ar: 2 point(s) cannot fit 3 free constants" in out.err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith("diffar 0.")


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", *args], capture_output=True, text=True, **kw
    )


def test_operator_without_kubeconfig_fails_fast_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(tmp_path / "missing"), HOME=str(tmp_path))
    r = cli("operator", "--standalone", env=env, timeout=30)
    assert r.returncode == 2
    assert r.stderr.startswith("diffar operator: error: no Kubernetes credentials")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_inspect_json_into_head_has_no_broken_pipe(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 400)
    prep = cli(
        "data", "prepare", str(text), "--out", str(tmp_path / "ds"), "--unique-tokens", "1000",
        "--val-tokens", "500", "--text-unit", "line", "--quiet",
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr
    # `| true` closes the pipe before anything is written: what `| head -1` does to longer
    # output, without the race.
    r = subprocess.run(
        f"{sys.executable} -m diffar.operator.cli data inspect --json {tmp_path / 'ds'} | true",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stderr == "", r.stderr
