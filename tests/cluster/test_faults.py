"""Faults against the real control plane: the operator SIGKILLed right after each step of a
reconcile and restarted (no duplicate children, status converges); kube-apiserver restarted
mid-run (the operator reconnects); etcd killed and restarted (nothing lost)."""

from __future__ import annotations

import copy
import signal
import time

import pytest

from .conftest import wait_for
from .kubeflow import pytorchjob_status
from .test_lifecycle import phase


def children(kube, ns: str, name: str) -> dict[str, list[str]]:
    """uids of every child labelled with the run, by kind."""
    sel = f"diffar.io/run={name}"
    return {
        kind: sorted(o["metadata"]["uid"] for o in kube.list(kind, ns, label_selector=sel))
        for kind in ("ConfigMap", "PyTorchJob", "Job")
    }


def poll_until(check, timeout: float = 30.0):
    """Fast polling: the operator is killed as soon as a step's effect is visible."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError("step never happened")


STEPS = {
    # step -> what is visible right after it
    "configmap-created": lambda k, ns, n: k.get("ConfigMap", ns, f"{n}-config"),
    "pytorchjob-created": lambda k, ns, n: k.get("PyTorchJob", ns, f"{n}-train"),
    "status-written": lambda k, ns, n: (k.get("DiffusionRun", ns, n).get("status") or {}).get(
        "phase"
    ),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_operator_killed_after_each_step_converges_without_duplicates(
    kube, ns, manifest, operator, step
):
    name = f"kill-{step}"[:40]
    m = copy.deepcopy(manifest)
    m["metadata"]["name"] = name
    operator.stop()
    kube.create(m)
    operator.start()
    poll_until(lambda: STEPS[step](kube, ns, name))
    operator.stop(sig=signal.SIGKILL)
    before = children(kube, ns, name)
    operator.start()
    wait_for("Pending", phase(kube, ns, "DiffusionRun", name, "Pending"), log=operator.output)
    after = children(kube, ns, name)
    assert len(after["ConfigMap"]) == 1 and len(after["PyTorchJob"]) == 1, after
    for kind, uids in before.items():
        assert set(uids) <= set(after[kind]), (kind, before, after)  # nothing recreated
    # The restarted operator carries the run on.
    pytorchjob_status(kube, ns, f"{name}-train", "Running")
    wait_for("Training", phase(kube, ns, "DiffusionRun", name, "Training"), log=operator.output)


def test_operator_killed_as_evaluation_starts(kube, ns, manifest, operator):
    name = manifest["metadata"]["name"]
    kube.create(manifest)
    wait_for("PyTorchJob", lambda: kube.get("PyTorchJob", ns, f"{name}-train"), log=operator.output)
    pytorchjob_status(kube, ns, f"{name}-train", "Succeeded")
    poll_until(lambda: kube.get("Job", ns, f"{name}-eval"))
    operator.stop(sig=signal.SIGKILL)
    operator.start()
    wait_for("Evaluating", phase(kube, ns, "DiffusionRun", name, "Evaluating"), log=operator.output)
    got = children(kube, ns, name)
    assert [len(v) for v in got.values()] == [1, 1, 1], got


def test_apiserver_restart_mid_run(control_plane, kube, ns, manifest, operator):
    name = manifest["metadata"]["name"]
    kube.create(manifest)
    wait_for("Pending", phase(kube, ns, "DiffusionRun", name, "Pending"), log=operator.output)
    before = children(kube, ns, name)
    control_plane.stop_process("kube-apiserver")
    time.sleep(2)  # the operator's watches and timers see connection errors meanwhile
    control_plane.start_apiserver()
    assert operator.alive(), operator.output()[-3000:]
    pytorchjob_status(kube, ns, f"{name}-train", "Running")
    wait_for(
        "Training after the restart",
        phase(kube, ns, "DiffusionRun", name, "Training"),
        timeout=90,
        log=operator.output,
    )
    assert children(kube, ns, name) == before


def test_etcd_killed_briefly_loses_nothing(control_plane, kube, ns, manifest, operator):
    name = manifest["metadata"]["name"]
    kube.create(manifest)
    run = wait_for("Pending", phase(kube, ns, "DiffusionRun", name, "Pending"), log=operator.output)
    before = children(kube, ns, name)
    control_plane.stop_process("etcd", sig=signal.SIGKILL)
    time.sleep(3)
    control_plane.start_etcd()
    control_plane.wait_healthy("kube-apiserver after etcd's restart", "kube-apiserver", timeout=90)
    again = kube.get("DiffusionRun", ns, name)
    assert again["metadata"]["uid"] == run["metadata"]["uid"]
    assert again["status"]["phase"] == "Pending"
    assert children(kube, ns, name) == before
    pytorchjob_status(kube, ns, f"{name}-train", "Running")
    wait_for(
        "Training after etcd's restart",
        phase(kube, ns, "DiffusionRun", name, "Training"),
        timeout=90,
        log=operator.output,
    )
    assert children(kube, ns, name) == before
