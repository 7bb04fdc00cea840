"""The study's reconcile against the tests' API server, without kopf: children created by name,
at most maxConcurrent unfinished, their status driven by hand, the fit Job, the result."""

from __future__ import annotations

import json

from diffar.operator.study import LABEL_STUDY
from diffar.operator.study_reconcile import reconcile_study

from .harness import NS
from .test_study_operator import NAME, create_terminated_pod, study_manifest


def test_reconcile_drives_a_study_to_its_fit(kube, cluster, tmp_path):
    from diffar.operator.study_fit import FitInput, run_fit

    emu = cluster.emulator
    kube.create(study_manifest())
    reconcile_study(kube, NS, NAME)
    runs = {}
    for kind in ("ARRun", "DiffusionRun"):
        for r in kube.list(kind, NS, label_selector=f"{LABEL_STUDY}={NAME}"):
            runs[r["metadata"]["name"]] = r
    assert len(runs) == 2
    reconcile_study(kube, NS, NAME)  # again: nothing new (restart safety)
    assert emu.created["arruns"] + emu.created["diffusionruns"] == 2
    loss = 4.0
    while True:
        st = kube.get("ScalingStudy", NS, NAME)["status"]
        if st["phase"] != "Running":
            break
        for row in st["children"]:
            if row["phase"] not in ("NotCreated", "Succeeded"):
                loss += 0.1
                kube.patch(row["kind"], NS, row["name"],
                           {"status": {"phase": "Succeeded", "results": {"valLoss": loss}}},
                           sub="status")  # fmt: skip
        reconcile_study(kube, NS, NAME)
    assert st["phase"] == "Fitting", st
    (job,) = [j for j in kube.list("Job", NS, label_selector=f"{LABEL_STUDY}={NAME}")]
    name = job["metadata"]["name"]
    doc = json.loads(kube.get("ConfigMap", NS, name)["data"]["fit.json"])
    out = run_fit(FitInput.model_validate(doc))
    create_terminated_pod(kube, name, "fit", json.dumps(out))
    kube.patch("Job", NS, name, {"status": {"conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}},
        sub="status")  # fmt: skip
    reconcile_study(kube, NS, NAME)
    st = kube.get("ScalingStudy", NS, NAME)["status"]
    assert st["phase"] == "Succeeded", (st["reason"], st["message"])
    assert st["fit"]["ar"]["points"] == 3
