"""The run manifests in examples/: admitted by our CRDs, valid for the operator, and each renders
to a PyTorchJob valid against the Kubeflow training operator's real CRD schema (and to a
ConfigMap and evaluator Job valid for Kubernetes). The paper's manifests carry its setup."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from testsupport.manifests import run_examples

from diffar.operator import crdgen, schemacheck
from diffar.operator.builders import render
from diffar.operator.runs import Run, Settings, planned_steps, validate

from .conftest import K8S_VERSIONS, PYTORCHJOB_CRD, ROOT, load_yaml

# Run manifests; ScalingStudies (study-*.yaml) have their own tests (tests/operator/test_study.py).
EXAMPLES = run_examples(ROOT)
PAPER_U = 99_952_399  # the paper's 100M unique tokens


@pytest.fixture(scope="module")
def run_crds() -> dict[str, dict]:
    return {crd["spec"]["names"]["kind"]: crd for crd in crdgen.crds()}


@pytest.fixture(scope="module")
def pytorchjob_schema() -> dict:
    return schemacheck.crd_schema(load_yaml(PYTORCHJOB_CRD), "v1")


def test_the_paper_manifests_exist():
    names = {p.name for p in EXAMPLES}
    for name in (
        "ar-100m.yaml",
        "diffusion-100m.yaml",
        "ar-25m.yaml",
        "diffusion-25m.yaml",
        "ar-50m.yaml",
        "diffusion-50m.yaml",
    ):
        assert name in names, name
    one_node_small = [
        p
        for p in EXAMPLES
        if load_yaml(p)["spec"].get("resources", {}).get("nodes", 1) == 1
        and load_yaml(p)["spec"]["model"].get("preset") in ("nano", "tiny", "small", "mini")
    ]
    assert one_node_small


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_admitted_and_valid(path, run_crds):
    manifest = load_yaml(path)
    assert schemacheck.admit(run_crds[manifest["kind"]], manifest) == []
    assert validate(Run.from_body(manifest)) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_during_training(path):
    """The paper's central figure is validation loss against epochs: without an interval a
    cluster run measures validation loss only once, at the end (diffar_train_val_loss stays
    empty). Between 8 and 60 validations per run."""
    run = Run.from_body(load_yaml(path))
    interval = run.spec.validation.interval
    assert interval, f"{path.name} sets no spec.validation.interval"
    assert run.spec.data.valUri
    assert 8 <= planned_steps(run) / interval <= 60, planned_steps(run) / interval


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_renders_to_a_valid_pytorchjob(path, pytorchjob_schema):
    run = Run.from_body(load_yaml(path))
    objs = render(run, Settings(pushgateway_url="http://pushgateway.monitoring.svc:9091"))
    assert [o["kind"] for o in objs] == ["ConfigMap", "PyTorchJob", "Job"]
    cm, job, ev = objs
    assert schemacheck.structural_errors(pytorchjob_schema, job) == []
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    workers = replicas.get("Worker", {}).get("replicas", 0)
    assert 1 + workers == run.spec.resources.nodes
    assert job["spec"]["nprocPerNode"] == str(run.spec.resources.gpusPerNode)
    for version in K8S_VERSIONS:
        for name, replica in replicas.items():
            template = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": name.lower()},
                "template": replica["template"],
            }
            kubernetes_validate.validate(template, version, strict=True)
        kubernetes_validate.validate(cm, version, strict=True)
        kubernetes_validate.validate(ev, version, strict=True)
    # Metrics port 9400 on rank 0's pod, where the PodMonitor and the operator look.
    ports = replicas["Master"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in ports


@pytest.mark.parametrize(
    ("name", "kind", "preset", "unique", "epochs"),
    [
        ("ar-100m.yaml", "ARRun", "140M", PAPER_U, 50),
        ("diffusion-100m.yaml", "DiffusionRun", "425M", PAPER_U, 500),
        ("ar-50m.yaml", "ARRun", "140M", 50_000_000, 50),
        ("diffusion-50m.yaml", "DiffusionRun", "425M", 50_000_000, 500),
        ("ar-25m.yaml", "ARRun", "140M", 25_000_000, 50),
        ("diffusion-25m.yaml", "DiffusionRun", "425M", 25_000_000, 500),
    ],
)
def test_paper_setup(name, kind, preset, unique, epochs):
    manifest = load_yaml(ROOT / "examples" / name)
    assert manifest["kind"] == kind
    run = Run.from_body(manifest)
    s = run.spec
    assert s.model.preset == preset and s.model.seqLen == 2048
    assert s.data.uniqueTokens == unique and s.data.epochs == epochs
    assert s.resources.gpusPerNode == 8
    t = s.training
    assert (t.globalBatch, t.lr, t.minLr, t.warmupFraction) == (256, 2e-4, 2e-5, 0.01)
    assert (t.weightDecay, t.gradClip, t.dropout) == (0.1, 1.0, 0.1)
    assert t.maxSteps is None
    if kind == "DiffusionRun":
        assert s.diffusion.maskEps == 1e-3
        assert s.evaluation.mcSamples == 32
    assert s.checkpoint.uri and s.data.valUri
    # The resolved TrainConfig the trainer gets carries the same numbers.
    cm = render(run, Settings())[0]
    train = json.loads(cm["data"]["train.json"])
    assert train["objective"] == ("mdm" if kind == "DiffusionRun" else "ar")
    assert train["epochs"] == epochs and train["global_batch"] == 256
    assert planned_steps(run) == int(epochs * ((unique - 1) // 2048) // 256)
