"""`diffar run --local`: the operator's resolution, torchx training, evaluation, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

VOCAB = 300
WORDS = [
    "the",
    "king",
    "queen",
    "sword",
    "crown",
    "river",
    "night",
    "speaks",
    "loves",
    "fears",
    "a",
    "an",
    "of",
    "to",
    "and",
]


def manifest(name: str, kind: str, epochs: float, evaluation: bool = True) -> dict:
    return {
        "apiVersion": "diffar.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "model": {"preset": "nano", "seqLen": 32, "vocabSize": VOCAB},
            "data": {
                "trainUri": "data/train",
                "valUri": "data/val",
                "uniqueTokens": 20000,
                "epochs": epochs,
            },
            "training": {
                "globalBatch": 16,
                "microBatch": 8,
                "lr": 3e-3,
                "minLr": 3e-4,
                "zeroStage": 0,
            },
            "checkpoint": {"uri": f"runs/{name}/checkpoints", "interval": 20},
            "validation": {"interval": 50, "maxTokens": 2000},
            "evaluation": {"enabled": evaluation, "tasks": [], "mcSamples": 2},
            "local": {"processes": 1, "threads": 1},
        },
    }


@pytest.fixture
def workdir(tmp_path):
    """Real text through a real (tiny) BPE, as the quickstart prepares it."""
    import random

    rng = random.Random(0)
    paragraphs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))).capitalize() + "."
        for _ in range(4000)
    ]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(paragraphs))
    tok = diffar(
        tmp_path, "data", "tokenizer", str(corpus), "--out", "tok.json", "--vocab-size", str(VOCAB)
    )
    assert tok.returncode == 0, tok.stderr
    prep = diffar(
        tmp_path, "data", "prepare", str(corpus), "--out", "data", "--unique-tokens", "20000",
        "--val-tokens", "4000", "--text-unit", "paragraph", "--tokenizer", "tok.json", "--quiet",
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr
    return tmp_path


def diffar(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_then_rerun_reports_complete(workdir):
    (workdir / "mdm.yaml").write_text(yaml.safe_dump(manifest("tiny-mdm", "DiffusionRun", 2)))
    first = diffar(workdir, "run", "mdm.yaml", "--local")
    assert first.returncode == 0, first.stdout + first.stderr
    status = yaml.safe_load(first.stdout[first.stdout.index("name: tiny-mdm") :])["status"]
    assert status["phase"] == "Succeeded" and status["objective"] == "mdm"
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 78
    assert status["results"]["valLoss"] > 0
    run_dir = workdir / "runs" / "tiny-mdm"
    results = json.loads((run_dir / "results.json").read_text())
    # Both vocabulary conventions: padded (the paper's) and text.
    assert set(results["validation"]) == {
        "elbo",
        "chain_rule_nll",
        "elbo_text",
        "chain_rule_nll_text",
    }
    assert json.loads((run_dir / "status.json").read_text())["phase"] == "Succeeded"
    # The config the operator would put in the ConfigMap is what trained here.
    assert json.loads((run_dir / "train.json").read_text())["model"]["vocab_size"] == VOCAB

    second = diffar(workdir, "run", "mdm.yaml", "--local")
    assert second.returncode == 0
    assert "already complete" in second.stdout
    assert (run_dir / "logs" / "train.log").read_text().count("==== ") == 1  # no second training
    # status.results shows every estimator and the training summary, as results.json has them.
    assert set(status["results"]["validation"]) == set(results["validation"])
    assert status["results"]["bestValLoss"] > 0 and status["results"]["wallSeconds"] > 0
    training = results["training"]
    assert training["best_val_loss"] == min(v for _, v in training["val_curve"])
    assert training["tokens_per_second"] > 0

    # A changed manifest for this folder is refused in one line; the Succeeded status stays.
    changed = manifest("tiny-mdm", "DiffusionRun", 2)
    changed["spec"]["training"]["lr"] = 1e-3
    (workdir / "mdm.yaml").write_text(yaml.safe_dump(changed))
    third = diffar(workdir, "run", "mdm.yaml", "--local")
    assert third.returncode == 2
    assert "trained with another manifest (changed: optim.lr)" in third.stderr
    assert len(third.stderr.strip().splitlines()) == 1
    assert json.loads((run_dir / "status.json").read_text())["phase"] == "Succeeded"
    assert (run_dir / "logs" / "train.log").read_text().count("==== ") == 1


def test_trainer_error_shows_its_cause_on_the_terminal(workdir):
    body = manifest("no-data", "ARRun", 1)
    body["spec"]["data"].update(trainUri="missing/train", valUri="missing/val")
    (workdir / "ar.yaml").write_text(yaml.safe_dump(body))
    r = diffar(workdir, "run", "ar.yaml", "--local")
    assert r.returncode == 2
    # The trainer's own line, not only torchrun's ChildFailedError footer.
    assert "diffar train: error: missing/train/manifest.json: no manifest" in r.stderr
    assert "ChildFailedError" not in r.stderr and "Traceback" not in r.stderr
    status = json.loads((workdir / "runs" / "no-data" / "status.json").read_text())
    assert status["phase"] == "Failed" and "no manifest" in status["message"]


def test_sigterm_suspends_and_a_concurrent_run_is_refused(workdir):
    (workdir / "ar.yaml").write_text(
        yaml.safe_dump(manifest("term-ar", "ARRun", 40, evaluation=False))
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffar.operator.cli", "run", "ar.yaml", "--local"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    status_file = workdir / "runs" / "term-ar" / "status.json"
    deadline = time.monotonic() + 120

    def step() -> int:
        try:
            return json.loads(status_file.read_text())["progress"]["step"]
        except (OSError, ValueError, KeyError):
            return 0

    # status.json follows the training while it runs (it used to stay at step 0).
    while step() == 0 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert step() > 0, "status.json never showed progress"
    second = diffar(workdir, "run", "ar.yaml", "--local")
    assert second.returncode == 2
    assert f"in use by another diffar run (pid {proc.pid})" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    status = json.loads(status_file.read_text())
    assert status["phase"] == "Suspended" and status["progress"]["step"] > 0
    assert not (workdir / "runs" / "term-ar" / "run.lock").exists()


def test_ctrl_c_then_rerun_resumes(workdir):
    (workdir / "ar.yaml").write_text(
        yaml.safe_dump(manifest("tiny-ar", "ARRun", 40, evaluation=False))
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffar.operator.cli", "run", "ar.yaml", "--local"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    latest = workdir / "runs" / "tiny-ar" / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while not latest.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert latest.exists(), "no checkpoint within 2 minutes"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "run the same command again to resume" in out
    status = json.loads((workdir / "runs" / "tiny-ar" / "status.json").read_text())
    assert status["phase"] == "Suspended"
    done = status["progress"]["step"]
    assert 0 < done < 1560

    again = diffar(workdir, "run", "ar.yaml", "--local", "--processes", "1", timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    log = (workdir / "runs" / "tiny-ar" / "logs" / "train.log").read_text()
    assert "resumed at step" in log
    assert "from scratch" in log.split("==== ")[1] and "from scratch" not in log.split("==== ")[2]


def test_cluster_only_manifest_is_refused_with_one_line(workdir):
    body = manifest("bad", "ARRun", 1)
    body["spec"]["training"]["globalBatch"] = 15
    body["spec"]["local"]["processes"] = 2
    (workdir / "bad.yaml").write_text(yaml.safe_dump(body))
    r = diffar(workdir, "run", "bad.yaml", "--local")
    assert r.returncode == 2
    assert "global_batch 15 is not divisible by world size 2" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_needs_local_flag(workdir):
    (workdir / "ar.yaml").write_text(yaml.safe_dump(manifest("x", "ARRun", 1)))
    r = diffar(workdir, "run", "ar.yaml")
    assert r.returncode == 2 and "kubectl apply -f ar.yaml" in r.stderr


def test_relative_paths_are_refused_for_the_cluster(workdir):
    (workdir / "ar.yaml").write_text(yaml.safe_dump(manifest("x", "ARRun", 1)))
    r = diffar(workdir, "render", "ar.yaml")
    assert r.returncode != 0
    assert "only `diffar run --local` reads" in r.stderr


def _env_without_tty():
    return {k: v for k, v in os.environ.items() if k != "TERM"}


def test_side_by_side_progress_lines_never_mix():
    # Two runs print from two threads; a line written in pieces (as print does: text, then
    # newline) could be cut by the other thread's line.
    import threading
    import time as _time

    from diffar.operator.local.runner import _Display

    class SlowStream:
        def __init__(self):
            self.parts = []

        def write(self, s):
            self.parts.append(s)
            _time.sleep(0.0005)  # yield to the other thread between writes

        def flush(self):
            pass

        def isatty(self):
            return False

    stream = SlowStream()

    def talk(name):
        d = _Display(name, stream)
        for i in range(50):
            d.line(f"message {i}")

    threads = [threading.Thread(target=talk, args=(n,)) for n in ("run-a", "run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = "".join(stream.parts).splitlines()
    assert len(lines) == 100
    assert all(line.startswith(("run-a: message ", "run-b: message ")) for line in lines)
