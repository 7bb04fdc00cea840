"""The CRDs: generated from the models, identical to crds/ and the chart, described and valid."""

from __future__ import annotations

import copy
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from diffar.operator import crdgen, gen_crds
from diffar.operator.api import KINDS

from .conftest import ROOT


def test_crds_dir_and_chart_match_the_models():
    assert gen_crds.drift() == [], "run `python -m diffar.operator.gen_crds` (make manifests)"


def test_diffar_crds_prints_what_crds_dir_holds():
    out = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "crds"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    printed = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out) if d}
    on_disk = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "crds").glob("*.yaml")}
    assert printed == on_disk
    assert set(printed) == {
        "diffusionruns.diffar.io",
        "arruns.diffar.io",
        "scalingstudies.diffar.io",
    }
    # Byte for byte: `diffar crds` == `cat crds/*.yaml` == `cat charts/diffar/crds/*.yaml`.
    for d in (ROOT / "crds", ROOT / "charts" / "diffar" / "crds"):
        assert out == "".join(p.read_text() for p in sorted(d.glob("*.yaml")))


def _walk(schema: dict, path: str):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_field_has_a_description(kind):
    crd = crdgen.crd_for(KINDS[kind])
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [
        p
        for p, node in _walk(schema, kind)
        if not node.get("description") and not p.endswith(("[]", "}")) and p != f"{kind}.metadata"
    ]
    assert missing == []
    # kubectl explain reads these: spot-check a deep one.
    spec = schema["properties"]["spec"]["properties"]
    assert "GPUs per node" in spec["resources"]["properties"]["gpusPerNode"]["description"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_structural_schema_rules(kind):
    """What the API server demands of a structural schema, checked on paper."""
    schema = crdgen.crd_for(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema, kind):
        assert "$ref" not in node, path
        assert isinstance(node.get("additionalProperties", {}), dict), path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
        else:
            assert "type" in node, f"{path} has no type"
        if "properties" in node:
            assert node["type"] == "object", path
        if isinstance(node.get("exclusiveMinimum"), bool):
            assert "minimum" in node, path
        assert "title" not in node and "nullable" not in node, path


def test_crd_shape(run_crds):
    for kind, crd in run_crds.items():
        if kind == "ScalingStudy":  # its own columns: tests/operator/test_study.py
            continue
        version = crd["spec"]["versions"][0]
        assert crd["spec"]["group"] == "diffar.io" and version["name"] == "v1alpha1"
        assert crd["spec"]["scope"] == "Namespaced"
        assert version["subresources"] == {"status": {}}
        columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
        for name in ("Phase", "Objective", "Progress", "Loss", "Age"):
            assert name in columns, (kind, name)
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        immutable = [
            name
            for name, sub in spec["properties"].items()
            if any(r["rule"] == "self == oldSelf" for r in sub.get("x-kubernetes-validations", []))
        ]
        # The objective's own settings define the experiment too: diffusion's, AR's (issue 15).
        expected = {"model", "data", "training"} | (
            {"diffusion"} if kind == "DiffusionRun" else {"ar"}
        )
        assert set(immutable) == expected
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True  # kopf keeps state here
        phases = status["properties"]["phase"]["enum"]
        assert phases == [
            "Pending",
            "Queued",
            "Training",
            "Evaluating",
            "Succeeded",
            "Failed",
            "Suspended",
        ]


def test_diffusion_only_fields():
    ar = crdgen.crd_for(KINDS["ARRun"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "diffusion" not in ar["properties"]["spec"]["properties"]


def test_crds_validate_as_apiextensions_objects():
    """The CRD objects themselves against Kubernetes' own CustomResourceDefinition schema."""
    for crd in crdgen.crds():
        kubernetes_validate.validate(crd, "1.33", strict=True)
    broken = copy.deepcopy(crdgen.crds()[0])
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validation"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33", strict=True)


def test_diffar_crds_out_writes_what_gen_crds_checks(tmp_path):
    dirs = (tmp_path / "crds", tmp_path / "chart" / "crds")
    ref = tmp_path / "docs" / "crd-reference.md"
    subprocess.run(
        [
            *(sys.executable, "-m", "diffar.operator.cli", "crds"),
            *("--out", str(dirs[0]), "--out", str(dirs[1]), "--reference", str(ref)),
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    assert gen_crds.drift(dirs, ref) == []
    (dirs[1] / "arruns.diffar.io.yaml").write_text("stale")
    (dirs[0] / "old.yaml").write_text("")
    assert gen_crds.drift(dirs, ref) == [
        str(dirs[0] / "old.yaml"),
        str(dirs[1] / "arruns.diffar.io.yaml"),
    ]


def test_the_operator_stays_light():
    """The operator image needs neither torch nor DeepSpeed nor boto3."""
    code = (
        "import sys, yaml\n"
        "import diffar.operator.handlers\n"
        "from diffar.operator.cli import build_parser\n"
        "from diffar.operator.builders import render\n"
        "from diffar.operator.runs import Run, Settings\n"
        "build_parser()\n"
        "render(Run.from_body(yaml.safe_load(open('examples/diffusion-100m.yaml'))), Settings())\n"
        "print(sorted(m for m in ('torch', 'deepspeed', 'boto3') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert out.strip() == "[]"


def _defaults(node: dict, path: str = ""):
    if "default" in node:
        yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _defaults(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _defaults(node["items"], f"{path}[]")


def test_every_default_passes_its_own_schema_and_rules(run_crds):
    """What the API server checks when the CRD is created: each default against its node's
    schema and CEL rules, as written (a nested object's `{}` fails `self.minLr <= self.lr`)."""
    from diffar.operator import schemacheck

    for crd in run_crds.values():
        schema = schemacheck.crd_schema(crd)
        found = list(_defaults(schema))
        if crd["spec"]["names"]["kind"] in ("ARRun", "DiffusionRun"):
            assert any(p == ".spec.training" for p, _ in found)
        for path, node in found:
            value = node["default"]
            assert schemacheck.structural_errors(node, value) == [], path
            rules_only = {k: v for k, v in node.items() if k != "properties"}
            assert schemacheck.cel_errors(rules_only, value) == [], path
