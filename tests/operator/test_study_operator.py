"""A ScalingStudy end to end: the real operator (kopf.testing.KopfRunner) against the tests'
API server, the runs' and the study's handlers together.

The study is applied; its children appear, owned by it, never more than maxConcurrent unfinished;
each child is driven as the controllers would (PyTorchJob Succeeded, evaluator Job Complete with
its pod's termination message) and the run operator turns it Succeeded with a loss; the operator
restarts mid-way and creates no duplicate; when every child is done the fit's ConfigMap and Job
appear, the Job's command (`diffar study-fit`) runs here on the ConfigMap's fit.json, its output
becomes the pod's termination message, and the study's status gets the fitted law.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kopf.testing import KopfRunner

from diffar.operator.study import LABEL_STUDY

from .harness import NS
from .test_e2e import ARGS, set_conditions, wait_for

NAME = "sweep"
MAX_CONCURRENT = 2


def study_manifest() -> dict:
    return {
        "apiVersion": "diffar.io/v1alpha1",
        "kind": "ScalingStudy",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "maxConcurrent": MAX_CONCURRENT,
            "grid": {
                "objectives": ["ar", "mdm"],
                "models": [{"preset": "tiny"}],
                "uniqueTokens": [1_000_000],
                "epochs": [1, 2, 4],
            },
            "template": {
                "model": {"seqLen": 128},
                "data": {"trainUri": "s3://data/train", "valUri": "s3://data/val"},
                "training": {"globalBatch": 32, "microBatch": 4},
                "resources": {"nodes": 1, "gpusPerNode": 4},
                "checkpoint": {"uri": "s3://runs/sweep"},
                "evaluation": {"tasks": []},
            },
            # Six children cannot fit seven constants: hold five, fit R_D* and R_N*.
            "fit": {
                "bootstrap": 0,
                "fixed": {
                    o: {"E": 1.9, "A": 520.0, "B": 1480.0, "alpha": 0.35, "beta": 0.35}
                    for o in ("ar", "mdm")
                },
            },
        },
    }


def children(kube) -> dict[str, dict]:
    out = {}
    for kind in ("ARRun", "DiffusionRun"):
        for item in kube.list(kind, NS, label_selector=f"{LABEL_STUDY}={NAME}"):
            out[item["metadata"]["name"]] = item
    return out


def unfinished(kube) -> list[str]:
    return [
        n
        for n, c in children(kube).items()
        if (c.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


def create_terminated_pod(kube, job: str, container: str, message: str) -> None:
    """The Job's pod, its container terminated with `message` (status through /status, as the
    kubelet writes it)."""
    kube.create({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job}-pod", "namespace": NS, "labels": {"job-name": job}},
        "spec": {"containers": [{"name": container, "image": "x"}]},
    })  # fmt: skip
    terminated = {
        "exitCode": 0,
        "reason": "Completed",
        "message": message,
        "startedAt": "2026-01-01T00:00:00Z",
        "finishedAt": "2026-01-01T00:01:00Z",
    }
    status = {"containerStatuses": [{"name": container, "state": {"terminated": terminated},
              "ready": False, "restartCount": 0, "image": "x", "imageID": ""}]}  # fmt: skip
    kube.patch("Pod", NS, f"{job}-pod", {"status": status}, sub="status")


def finish_child(kube, name: str, kind: str, loss: float) -> None:
    """What the training operator, the Job controller and the evaluator would do."""
    wait_for(f"{name}-train", lambda: kube.get("PyTorchJob", NS, f"{name}-train"))
    set_conditions(kube, "PyTorchJob", f"{name}-train", "Created", "Running", "Succeeded")
    wait_for(f"{name}-eval", lambda: kube.get("Job", NS, f"{name}-eval"), timeout=30)
    create_terminated_pod(kube, f"{name}-eval", "evaluator", json.dumps({"loss": loss}))
    set_conditions(kube, "Job", f"{name}-eval", "Complete")
    wait_for(
        f"{name} Succeeded",
        lambda: (kube.get(kind, NS, name).get("status") or {}).get("phase") == "Succeeded",
        timeout=30,
    )


@pytest.mark.integration
def test_study_end_to_end(operator_env, kube, cluster, tmp_path):
    emu = cluster.emulator
    kube.create(study_manifest())
    study = kube.get("ScalingStudy", NS, NAME)
    assert study["spec"]["fit"]["enabled"] is True  # the CRD's defaults applied at admission
    losses = {"ar": [4.2, 4.0, 4.1], "mdm": [4.5, 4.3, 4.2]}
    done: dict[str, float] = {}

    def finish_next(kube) -> None:
        name = sorted(unfinished(kube))[0]
        body = children(kube)[name]
        obj = body["metadata"]["labels"]["diffar.io/objective"]
        loss = losses[obj][sum(n.startswith(f"{NAME}-{obj}") for n in done)]
        finish_child(kube, name, body["kind"], loss)
        done[name] = loss

    with KopfRunner(ARGS, timeout=60) as runner:
        wait_for("first children", lambda: len(children(kube)) == MAX_CONCURRENT)
        for c in children(kube).values():
            (ref,) = c["metadata"]["ownerReferences"]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
                "ScalingStudy", NAME, study["metadata"]["uid"], True,
            )  # fmt: skip
        st = wait_for("Running", lambda: kube.get("ScalingStudy", NS, NAME).get("status"))
        finish_next(kube)
        wait_for("a freed slot is filled", lambda: len(children(kube)) == MAX_CONCURRENT + 1)
        assert len(unfinished(kube)) <= MAX_CONCURRENT
    assert runner.exception is None, runner.stdout

    # The operator restarts: it finds the children by name and creates no second copy.
    created_before = emu.created["arruns"] + emu.created["diffusionruns"]
    with KopfRunner(ARGS, timeout=60) as runner:
        while len(done) < 6:
            assert len(unfinished(kube)) <= MAX_CONCURRENT
            wait_for("a child to finish", lambda: unfinished(kube))
            finish_next(kube)
        assert emu.created["arruns"] + emu.created["diffusionruns"] == 6
        assert emu.created["arruns"] + emu.created["diffusionruns"] >= created_before
        st = wait_for(
            "Fitting",
            lambda: (
                (s := kube.get("ScalingStudy", NS, NAME).get("status") or {}).get("phase")
                == "Fitting"
                and s
            ),
        )
        jobs = kube.list("Job", NS, label_selector=f"{LABEL_STUDY}={NAME}")
        (job,) = [j for j in jobs if j["metadata"]["name"].startswith(f"{NAME}-fit-")]
        fit_name = job["metadata"]["name"]
        cm = kube.get("ConfigMap", NS, fit_name)
        points = json.loads(cm["data"]["fit.json"])["points"]
        assert sorted(p["loss"] for p in points) == sorted(done.values())
        # The Job's container, run here on its ConfigMap.
        (container,) = job["spec"]["template"]["spec"]["containers"]
        path = tmp_path / "fit.json"
        path.write_text(cm["data"]["fit.json"])
        out = subprocess.run(
            [sys.executable, "-m", "diffar.operator.cli", *container["args"][:1], "--config",
             str(path)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        create_terminated_pod(kube, fit_name, "fit", out)
        set_conditions(kube, "Job", fit_name, "Complete")
        st = wait_for(
            "Succeeded",
            lambda: (
                (s := kube.get("ScalingStudy", NS, NAME).get("status") or {}).get("phase")
                == "Succeeded"
                and s
            ),
        )
    assert runner.exception is None, runner.stdout
    assert st["reason"] == "Fitted" and st["counts"]["succeeded"] == 6
    for obj in ("ar", "mdm"):
        law = st["fit"][obj]
        assert law["values"]["R_D_star"] > 0 and law["points"] == 3
        assert law["identified"]["R_D_star"] is True
        assert set(law["fixed"]) == {"E", "A", "B", "alpha", "beta"}
    assert {r["name"]: r["bestLoss"] for r in st["children"]} == done
    assert [c["uniqueTokens"] for c in st["fit"]["criticalCompute"]] == [1_000_000]
