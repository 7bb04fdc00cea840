"""Contract: what the builders produce is accepted by the real schemas.

PyTorchJobs validate against the Kubeflow training operator's own CRD schema (jsonschema, with
unknown fields treated as errors unless the schema preserves them); ConfigMaps and Jobs validate
with kubernetes-validate; example runs are admitted by our CRDs' schema and CEL rules.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import jsonschema  # noqa: F401  (a missing component fails the run)
import kubernetes_validate
import pytest
import yaml

from diffar.operator import schemacheck
from diffar.operator.builders import render
from diffar.operator.runs import Run, Settings, validate

from .conftest import EXAMPLES, PYTORCHJOB_CRD, ROOT, load_yaml

K8S_VERSION = "1.33"


def _variants(base: dict) -> list[dict]:
    """The example plus the spec branches that change the PyTorchJob's shape."""
    out = [base]
    one = copy.deepcopy(base)
    one["spec"]["resources"].update(nodes=1, gpusPerNode=1)
    one["spec"]["training"] = {"globalBatch": 8, "microBatch": 8}
    one["spec"]["scheduling"] = {}
    out.append(one)
    gang = copy.deepcopy(base)
    gang["spec"]["scheduling"] = {"volcano": {"queue": "gpus", "priorityClass": "high"}}
    gang["spec"]["suspend"] = True
    gang["spec"]["resources"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                ]
            }
        }
    }
    gang["spec"]["resources"]["priorityClassName"] = "training"
    gang["spec"]["images"] = {"pullSecrets": ["regcred"], "pullPolicy": "Always"}
    out.append(gang)
    return out


CASES = [
    pytest.param(variant, id=f"{path.stem}-{i}")
    for path in EXAMPLES
    for i, variant in enumerate(_variants(load_yaml(path)))
]


def test_examples_exist():
    assert len(EXAMPLES) >= 3
    kinds = {load_yaml(p)["kind"] for p in EXAMPLES}
    assert kinds == {"DiffusionRun", "ARRun"}


def test_the_shared_pytorchjob_crd_is_there():
    # A missing CRD must fail the contract tests, never skip them.
    assert PYTORCHJOB_CRD.is_file(), (
        f"{PYTORCHJOB_CRD} is missing: the shared folder must sit beside the checkout"
    )


@pytest.mark.parametrize("manifest", CASES)
def test_examples_are_admitted_by_our_crds(manifest, run_crds):
    assert schemacheck.admit(run_crds[manifest["kind"]], manifest) == []
    run = Run.from_body(manifest)
    assert validate(run) == []


@pytest.mark.parametrize("manifest", CASES)
def test_pytorchjob_validates_against_the_kubeflow_crd(manifest, pytorchjob_crd):
    objs = render(Run.from_body(manifest), Settings(pushgateway_url="http://pgw:9091"))
    (job,) = [o for o in objs if o["kind"] == "PyTorchJob"]
    schema = schemacheck.crd_schema(pytorchjob_crd, "v1")
    assert schemacheck.structural_errors(schema, job) == []
    # The pod template itself is a core/v1 PodTemplateSpec: check it with the built-in schemas too.
    for name, replica in job["spec"]["pytorchReplicaSpecs"].items():
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name.lower()}}
        template["template"] = replica["template"]
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)


@pytest.mark.parametrize("manifest", CASES)
def test_builtin_children_validate_with_kubernetes_validate(manifest):
    objs = render(Run.from_body(manifest), Settings())
    builtin = [o for o in objs if o["kind"] in ("ConfigMap", "Job")]
    assert {o["kind"] for o in builtin} == {"ConfigMap", "Job"}
    for obj in builtin:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_validator_does_catch_bad_pytorchjobs(pytorchjob_crd):
    """The contract check is not vacuous: typos and wrong types are errors."""
    manifest = load_yaml(EXAMPLES[0])
    job = render(Run.from_body(manifest), Settings())[1]
    schema = schemacheck.crd_schema(pytorchjob_crd, "v1")
    typo = copy.deepcopy(job)
    typo["spec"]["runPolicy"]["backofLimit"] = 3
    assert schemacheck.structural_errors(schema, typo)
    wrong = copy.deepcopy(job)
    wrong["spec"]["nprocPerNode"] = 8
    assert schemacheck.structural_errors(schema, wrong)
    container = copy.deepcopy(job)
    spec = container["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    spec["containers"][0]["imagePullPolicy"] = 3
    assert schemacheck.structural_errors(schema, container)
    with pytest.raises(kubernetes_validate.ValidationError):
        bad = render(Run.from_body(manifest), Settings())[0]
        bad["data"] = {"train.json": 1}
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_diffar_render_prints_a_valid_pytorchjob(path, pytorchjob_crd):
    """Acceptance 2: `diffar render examples/<run>.yaml` through the real CLI."""
    out = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "render", str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    objs = list(yaml.safe_load_all(out))
    kinds = [o["kind"] for o in objs]
    assert kinds == ["ConfigMap", "PyTorchJob", "Job"]
    schema = schemacheck.crd_schema(pytorchjob_crd, "v1")
    assert schemacheck.structural_errors(schema, objs[1]) == []
