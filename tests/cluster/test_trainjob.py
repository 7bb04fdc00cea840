"""The TrainJob backend against the real API server: the chart installed with
`backend=trainjob` (a second release, so the session's default release keeps its RBAC), its
runtime and every rendered TrainJob admitted for real (OpenAPI schemas and CEL rules of Trainer
v2.3.0's CRDs), and the same lifecycle as the PyTorchJob backend, with the TrainJob's status
written through its status subresource as Trainer's controller writes it (trainer.py). The
operator runs as the trainjob release's ServiceAccount: TrainJob RBAC and no PyTorchJob RBAC."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator

import pytest
import yaml
from testsupport import cluster
from testsupport.manifests import run_examples

from diffar.operator.builders import render
from diffar.operator.runs import Run, Settings

from .conftest import GC_TIMEOUT, ROOT, Operator, wait_for
from .kubeflow import pod_terminated
from .test_lifecycle import owned_by, phase, run_events
from .trainer import trainjob_status

RELEASE = NS = "diffar-tj"  # the chart's full name is the release name (it contains "diffar")
RUNTIME = "diffar-torch"
EXAMPLES = run_examples(ROOT)


@pytest.fixture(scope="module")
def trainjob_release(control_plane) -> Iterator[str]:
    control_plane.helm(
        "upgrade", "--install", RELEASE, str(ROOT / "charts" / "diffar"),
        "--namespace", NS, "--create-namespace", "--wait=false",
        "--set", "backend=trainjob", "--set", "trainingRuntime.volcano=true",
    )  # fmt: skip
    yield RELEASE
    control_plane.helm("uninstall", RELEASE, "--namespace", NS, check=False)


@pytest.fixture()
def tj_operator(control_plane, trainjob_release, tmp_path) -> Iterator[Operator]:
    op = Operator(control_plane, tmp_path / "operator.log")
    op.start("--backend", "trainjob", account=(NS, RELEASE))  # free ports: start_operator
    yield op
    op.stop()
    (tmp_path / "operator.log").write_text(op.output())


def test_the_chart_runtimes_are_admitted_for_real(control_plane, trainjob_release, kube):
    names = control_plane.kubectl(
        "get", "clustertrainingruntimes", "-o", "jsonpath={.items[*].metadata.name}"
    ).stdout.split()
    assert sorted(names) == [RUNTIME, f"{RUNTIME}-volcano"]
    rt = json.loads(
        control_plane.kubectl("get", "clustertrainingruntime", RUNTIME, "-o", "json").stdout
    )
    shipped = subprocess.run(
        [cluster.tool("helm"), "template", "x", str(ROOT / "charts" / "diffar"),
         "--set", "backend=trainjob", "-s", "templates/trainingruntime.yaml"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert contains(rt["spec"], yaml.safe_load(shipped)["spec"])  # nothing pruned
    # Namespaced mode: TrainingRuntimes, applied with a server-side dry run.
    out = subprocess.run(
        [cluster.tool("helm"), "template", "x", str(ROOT / "charts" / "diffar"),
         "--set", "backend=trainjob", "--set", "trainingRuntime.volcano=true",
         "--set", f"operator.watchNamespaces={{{NS}}}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    runtimes = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "TrainingRuntime"]
    assert len(runtimes) == 2
    control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(runtimes)
    )


def _variants(manifest: dict) -> list[dict]:
    placed = copy.deepcopy(manifest)
    placed["spec"]["suspend"] = True
    placed["spec"]["scheduling"] = {"volcano": {"queue": "gpus"}}
    placed["spec"]["images"] = {"pullSecrets": ["regcred"]}
    placed["spec"]["resources"]["affinity"] = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
            ]
        }
    }
    return [manifest, placed]


def test_every_rendered_trainjob_is_admitted_for_real(control_plane, trainjob_release, ns):
    settings = Settings(backend="trainjob")
    items = []
    for path in EXAMPLES:
        manifest = yaml.safe_load(path.read_text())
        manifest["metadata"]["namespace"] = ns
        for i, variant in enumerate(_variants(manifest)):
            variant["metadata"]["name"] += f"-{i}"
            (tj,) = [o for o in render(Run.from_body(variant), settings) if o["kind"] == "TrainJob"]
            tj["metadata"].pop("ownerReferences")  # the runs themselves are not created here
            items.append(tj)
    assert len(items) == 2 * len(EXAMPLES)
    doc = {"apiVersion": "v1", "kind": "List", "items": items}
    out = control_plane.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(doc)
    ).stdout
    admitted, decoder, at = [], json.JSONDecoder(), 0
    while at < len(out.rstrip()):
        obj, at = decoder.raw_decode(out, at)
        admitted.append(obj)
        while at < len(out) and out[at].isspace():
            at += 1
    assert len(admitted) == len(items)
    for sent, live in zip(items, admitted, strict=True):
        # Nothing pruned: every field sent is a field of the schema (the server adds defaults).
        assert contains(live["spec"], sent["spec"]), sent["metadata"]["name"]


def contains(live, sent) -> bool:
    if isinstance(sent, dict):
        return isinstance(live, dict) and all(
            k in live and contains(live[k], v) for k, v in sent.items()
        )
    if isinstance(sent, list):
        return isinstance(live, list) and len(live) == len(sent) and all(map(contains, live, sent))
    return live == sent


def test_cel_rules_hold_for_real(control_plane, trainjob_release, kube, ns, manifest):
    tj = render(Run.from_body(manifest), Settings(backend="trainjob"))[1]
    tj["metadata"].pop("ownerReferences")
    kube.create(tj)
    name = tj["metadata"]["name"]
    # spec.trainer is immutable (CEL self == oldSelf), spec.suspend is not.
    bad = control_plane.kubectl(
        "-n", ns, "patch", "trainjob", name, "--type=merge",
        "-p", '{"spec":{"trainer":{"numNodes":7}}}', check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "immutable" in bad.stderr
    kube.patch("TrainJob", ns, name, {"spec": {"suspend": True}})
    # trainerStatus needs lastUpdatedTime (CEL on the status subresource).
    bad = control_plane.kubectl(
        "-n", ns, "patch", "trainjob", name, "--subresource=status", "--type=merge",
        "-p", '{"status":{"trainerStatus":{"progressPercentage":5}}}', check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "lastUpdatedTime" in bad.stderr


def test_trainjob_run_lifecycle(
    control_plane, kube, ns, manifest, tj_operator, trainer_metrics, pushgateway
):
    name = manifest["metadata"]["name"]
    train = f"{name}-train"
    log = tj_operator.output
    kube.create(manifest)
    run = kube.get("DiffusionRun", ns, name)

    # 1. Children: the ConfigMap and a TrainJob on the chart's runtime, owned by the run.
    cm = wait_for("ConfigMap", lambda: kube.get("ConfigMap", ns, f"{name}-config"), log=log)
    tj = wait_for("TrainJob", lambda: kube.get("TrainJob", ns, train), log=log)
    assert owned_by(cm, run) and owned_by(tj, run)
    assert tj["spec"]["runtimeRef"]["name"] == RUNTIME
    assert tj["spec"]["trainer"]["numNodes"] == 2 and tj["spec"]["trainer"]["numProcPerNode"] == 4
    assert kube.get("PyTorchJob", ns, train) is None
    run = wait_for("Pending", phase(kube, ns, "DiffusionRun", name, "Pending"), log=log)
    assert run["status"]["message"] == "TrainJob created"

    # 2. Trainer starts the JobSet; the node pods come up; progress from rank 0's metrics.
    trainjob_status(kube, ns, train, "Pending")
    trainer_metrics.set_progress(ns, name, step=100, loss=7.25, tokens=409600, epoch=0.41)
    wait_for(
        "PodsPending",
        lambda: kube.get("DiffusionRun", ns, name)["status"]["reason"] == "PodsPending",
        log=log,
    )
    trainjob_status(kube, ns, train, "Running")
    run = wait_for(
        "progress",
        lambda: (
            (r := kube.get("DiffusionRun", ns, name))["status"]["progress"]["step"] == 100 and r
        ),
        log=log,
    )
    assert run["status"]["phase"] == "Training"
    assert run["status"]["progress"]["summary"] == "100/976 (10%)"

    # 3. Suspend and resume through kubectl: the operator flips the TrainJob's spec.suspend.
    control_plane.kubectl(
        "-n", ns, "patch", "diffusionrun", name, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    wait_for(
        "TrainJob suspended", lambda: kube.get("TrainJob", ns, train)["spec"]["suspend"], log=log
    )
    trainjob_status(kube, ns, train, "Suspended")
    wait_for("Suspended", phase(kube, ns, "DiffusionRun", name, "Suspended"), log=log)
    control_plane.kubectl(
        "-n", ns, "patch", "diffusionrun", name, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    wait_for(
        "TrainJob resumed", lambda: not kube.get("TrainJob", ns, train)["spec"]["suspend"], log=log
    )
    trainjob_status(kube, ns, train, "Pending")
    trainjob_status(kube, ns, train, "Running")
    wait_for("Training again", phase(kube, ns, "DiffusionRun", name, "Training"), log=log)

    # 4. Complete: the unchanged evaluator Job, its pod from the real Job controller.
    trainjob_status(kube, ns, train, "Complete")
    run = wait_for("Evaluating", phase(kube, ns, "DiffusionRun", name, "Evaluating"), log=log)
    assert run["status"]["progress"]["summary"] == "976/976 (100%)"
    job = wait_for("eval Job", lambda: kube.get("Job", ns, f"{name}-eval"), log=log)
    assert owned_by(job, run)
    pod = wait_for(
        "evaluator pod", lambda: kube.list("Pod", ns, label_selector=f"job-name={name}-eval")
    )[0]
    summary = {"loss": 3.55, "loss_estimator": "elbo", "tasks": {"piqa": {"acc": 0.6}}}
    pod_terminated(kube, ns, pod, 0, json.dumps(summary))
    run = wait_for("Succeeded", phase(kube, ns, "DiffusionRun", name, "Succeeded"), log=log)
    assert run["status"]["results"]["valLoss"] == 3.55
    reasons = {e["reason"] for e in run_events(kube, ns, "DiffusionRun", name)}
    assert {"ChildrenCreated", "TrainingRunning", "EvaluationSucceeded"} <= reasons

    # 5. Delete: the garbage collector takes the TrainJob with the run.
    control_plane.kubectl("-n", ns, "delete", "diffusionrun", name, "--timeout=60s")
    wait_for(
        "TrainJob collected", lambda: kube.get("TrainJob", ns, train) is None, timeout=GC_TIMEOUT
    )


def test_trainjob_failure(control_plane, kube, ns, manifest, tj_operator):
    ar = copy.deepcopy(manifest)
    ar["kind"] = "ARRun"
    ar["metadata"]["name"] = "ar-fails"
    log = tj_operator.output
    kube.create(ar)
    wait_for("TrainJob", lambda: kube.get("TrainJob", ns, "ar-fails-train"), log=log)
    trainjob_status(kube, ns, "ar-fails-train", "Running")
    wait_for("Training", phase(kube, ns, "ARRun", "ar-fails", "Training"), log=log)
    trainjob_status(kube, ns, "ar-fails-train", "Failed")
    run = wait_for("Failed", phase(kube, ns, "ARRun", "ar-fails", "Failed"), log=log)
    assert run["status"]["reason"] == "TrainingFailed"
    assert run["status"]["message"] == "jobset failed due to a failed job: node"
    assert kube.get("Job", ns, "ar-fails-eval") is None


def test_kueue_admits_the_trainjob(control_plane, kube, ns, manifest, tj_operator):
    m = copy.deepcopy(manifest)
    m["metadata"]["name"] = "queued-run"
    m["spec"]["scheduling"] = {"kueue": {"queueName": "gpu-queue"}}
    kube.create(m)
    log = tj_operator.output
    run = wait_for("Queued", phase(kube, ns, "DiffusionRun", "queued-run", "Queued"), log=log)
    assert run["status"]["reason"] == "QueuedByKueue"
    tj = kube.get("TrainJob", ns, "queued-run-train")
    assert tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert tj["spec"]["suspend"] is True
    trainjob_status(kube, ns, "queued-run-train", "Suspended")
    # Kueue admits: it adds its own runtime patch (flavor placement) and unsuspends, in one patch.
    kueue_patch = {
        "manager": "kueue.x-k8s.io/manager",
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
            {"name": "node", "template": {"spec": {"template": {"spec": {
                "nodeSelector": {"cloud.example.com/flavor": "h100"}}}}}}
        ]}}},
    }  # fmt: skip
    kube.patch(
        "TrainJob",
        ns,
        "queued-run-train",
        {
            "spec": {
                "suspend": False,
                "runtimePatches": [*tj["spec"]["runtimePatches"], kueue_patch],
            }
        },
    )
    trainjob_status(kube, ns, "queued-run-train", "Pending")
    trainjob_status(kube, ns, "queued-run-train", "Running")
    wait_for("Training", phase(kube, ns, "DiffusionRun", "queued-run", "Training"), log=log)
    tj = kube.get("TrainJob", ns, "queued-run-train")
    assert tj["spec"]["suspend"] is False
    assert [p["manager"] for p in tj["spec"]["runtimePatches"]] == [
        "diffar.io/operator",
        "kueue.x-k8s.io/manager",
    ]


def test_trainer_status_progress(control_plane, kube, ns, manifest, tj_operator, trainer_metrics):
    name = "progress-run"
    m = copy.deepcopy(manifest)
    m["metadata"]["name"] = name
    kube.create(m)
    log = tj_operator.output
    wait_for("TrainJob", lambda: kube.get("TrainJob", ns, f"{name}-train"), log=log)
    # No metrics endpoint answers for this run: Trainer's own progress report is what there is.
    trainjob_status(
        kube, ns, f"{name}-train", "Running",
        trainer={"progressPercentage": 25, "metrics": [{"name": "loss", "value": "6.5"}]},
    )  # fmt: skip
    run = wait_for(
        "progress",
        lambda: (
            (r := kube.get("DiffusionRun", ns, name))["status"]["progress"]["step"] == 244 and r
        ),
        log=log,
    )
    assert run["status"]["progress"]["loss"] == 6.5
    assert run["status"]["progress"]["summary"] == "244/976 (25%)"
