"""Contract of the TrainJob backend: what `diffar.operator.trainjob` builds and what the chart
ships are accepted by Kubeflow Trainer v2.3.0's own CRDs.

The CRDs are read from ../shared/kubeflow-trainer/ (beside the checkout, as its README asks; a
missing file fails these tests). Checks, offline: the CRDs' OpenAPI schemas (unknown fields are
errors) and their CEL rules (schemacheck), the rules Trainer's admission webhook adds (patch
manager, replicated job and container names that exist in the runtime, no env patches on the
`node` container, no reserved PET_* variables), and the pod that Trainer composes from the
runtime, the TrainJob's patch and its trainer block, checked as a core/v1 PodTemplate.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import jsonschema  # noqa: F401  (a missing component fails the run)
import kubernetes_validate
import pytest
import yaml
from testsupport.pod_security import violations

from diffar.operator import builders, schemacheck, trainjob
from diffar.operator.api import DEFAULT_TRAINER_IMAGE
from diffar.operator.runs import Run, Settings, validate

from .conftest import EXAMPLES, ROOT, load_yaml

TRAINER_CRDS = ROOT.parent / "shared" / "kubeflow-trainer"
CHART = ROOT / "charts" / "diffar"
HELM = ROOT / ".tools" / "bin" / "helm"
K8S_VERSION = "1.33"
SETTINGS = Settings(backend="trainjob", pushgateway_url="http://pgw:9091")
RESERVED = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR"}
RESERVED |= {"PET_MASTER_PORT"}


def _crd(name: str) -> dict:
    path = TRAINER_CRDS / f"trainer.kubeflow.org_{name}.yaml"
    assert path.is_file(), f"{path} is missing: the shared folder must sit beside the checkout"
    return load_yaml(path)


@pytest.fixture(scope="session")
def trainjob_crd() -> dict:
    return _crd("trainjobs")


@pytest.fixture(scope="session")
def runtime_crds() -> dict[str, dict]:
    return {
        "ClusterTrainingRuntime": _crd("clustertrainingruntimes"),
        "TrainingRuntime": _crd("trainingruntimes"),
    }


def helm_template(*sets: str) -> list[dict]:
    assert HELM.is_file(), "helm is missing: run bash scripts/install-tools.sh"
    cmd = [str(HELM), "template", "diffar", str(CHART), "--namespace", "diffar-system"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="session")
def runtime() -> dict:
    (rt,) = [o for o in helm_template("backend=trainjob") if o["kind"] == "ClusterTrainingRuntime"]
    return rt


def _variants(base: dict) -> list[dict]:
    """The example plus the spec branches that change the TrainJob's shape."""
    out = [base]
    one = copy.deepcopy(base)
    one["spec"]["resources"].update(nodes=1, gpusPerNode=1)
    one["spec"]["training"] = {"globalBatch": 8, "microBatch": 8}
    one["spec"]["scheduling"] = {}
    one["spec"]["s3"] = {}
    out.append(one)
    placed = copy.deepcopy(base)
    placed["spec"]["scheduling"] = {}
    placed["spec"]["suspend"] = True
    placed["spec"]["resources"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                ]
            }
        }
    }
    placed["spec"]["resources"]["sharedMemory"] = "64Gi"
    placed["spec"]["images"] = {
        "pullSecrets": ["regcred"],
        "trainer": "registry.local/t@sha256:" + "a" * 64,
    }
    out.append(placed)
    gang = copy.deepcopy(base)
    gang["spec"]["scheduling"] = {"volcano": {"queue": "gpus"}}
    out.append(gang)
    return out


CASES = [
    pytest.param(variant, id=f"{path.stem}-{i}")
    for path in EXAMPLES
    for i, variant in enumerate(_variants(load_yaml(path)))
]


def build(manifest: dict, settings: Settings = SETTINGS) -> dict:
    run = Run.from_body(manifest)
    assert validate(run) == [] and trainjob.problems(run) == []
    (tj,) = [o for o in builders.render(run, settings) if o["kind"] == "TrainJob"]
    return tj


def patch_metadata(tj: dict) -> dict:
    (patch,) = tj["spec"]["runtimePatches"]
    return patch["trainingRuntimeSpec"]["template"].get("metadata", {})


# --- the TrainJob against Trainer's CRD ------------------------------------------------------


@pytest.mark.parametrize("manifest", CASES)
def test_trainjob_is_admitted_by_the_trainer_crd(manifest, trainjob_crd):
    tj = build(manifest)
    assert schemacheck.admit(trainjob_crd, tj) == []
    # An update that changes nothing but suspend (what the operator and Kueue do) is admitted
    # too: the immutability rules (trainer, runtimeRef, runtimePatches' containers) hold.
    resumed = copy.deepcopy(tj)
    resumed["spec"]["suspend"] = not tj["spec"]["suspend"]
    assert schemacheck.admit(trainjob_crd, resumed, old=tj) == []


@pytest.mark.parametrize("manifest", CASES)
def test_trainjob_keeps_trainers_webhook_rules(manifest, runtime):
    tj = build(manifest)
    jobs = {
        j["name"]: {c["name"] for c in j["template"]["spec"]["template"]["spec"]["containers"]}
        for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]
    }
    assert {e["name"] for e in tj["spec"]["trainer"]["env"]}.isdisjoint(RESERVED)
    for patch in tj["spec"]["runtimePatches"]:
        # validation.IsDomainPrefixedPath
        assert re.match(
            r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9/._~%!$&'()*+,;=:-]+$", patch["manager"]
        )
        for rjob in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            assert rjob["name"] in jobs
            for c in rjob["template"]["spec"]["template"]["spec"].get("containers", []):
                assert c["name"] in jobs[rjob["name"]]
                assert "env" not in c  # the node container's env comes from spec.trainer only


@pytest.mark.parametrize("manifest", CASES)
def test_trainjob_carries_the_run(manifest):
    run = Run.from_body(manifest)
    tj = build(manifest)
    spec, r = tj["spec"], run.spec.resources
    assert tj["metadata"]["name"] == run.train_job_name
    assert tj["metadata"]["ownerReferences"][0]["controller"] is True
    volcano = run.spec.scheduling.volcano
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "diffar-torch-volcano" if volcano else "diffar-torch",
    }
    annotations = patch_metadata(tj).get("annotations", {})
    if volcano and volcano.queue:
        assert annotations == {"scheduling.volcano.sh/queue-name": volcano.queue}
    else:
        assert annotations == {}
    t = spec["trainer"]
    assert (t["numNodes"], t["numProcPerNode"]) == (r.nodes, r.gpusPerNode)
    assert t["image"] == run.spec.images.trainer
    assert [*t["command"], *t["args"]][-2:] == ["--config", "/etc/diffar/train.json"]
    assert t["resourcesPerNode"]["limits"][r.gpuResource] == str(r.gpusPerNode)
    env = {e["name"]: e for e in t["env"]}
    if run.spec.s3.credentialsSecret:
        ref = env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == run.spec.s3.credentialsSecret
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["diffar.io/run"] == run.name
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == run.config_map_name
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == str(r.sharedMemory)
    assert pod["spec"].get("nodeSelector", {}) == r.nodeSelector
    kueue = run.spec.scheduling.kueue
    assert spec["suspend"] is bool(run.spec.suspend or kueue)
    if kueue:
        assert tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == kueue.queueName


def test_namespaced_runtime_reference(manifest):
    settings = Settings(
        backend="trainjob", training_runtime="gpu-torch", training_runtime_kind="TrainingRuntime"
    )
    tj = builders.build_train_job(Run.from_body(manifest), settings)
    assert tj["spec"]["runtimeRef"]["kind"] == "TrainingRuntime"
    assert tj["spec"]["runtimeRef"]["name"] == "gpu-torch"


def test_the_check_is_not_vacuous(trainjob_crd):
    tj = build(load_yaml(EXAMPLES[0]))
    typo = copy.deepcopy(tj)
    typo["spec"]["trainer"]["numNode"] = 2
    assert schemacheck.admit(trainjob_crd, typo)
    wrong = copy.deepcopy(tj)
    wrong["spec"]["trainer"]["numNodes"] = "2"
    assert schemacheck.admit(trainjob_crd, wrong)
    misplaced = copy.deepcopy(tj)
    pod = misplaced["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["spec"]
    pod["priorityClassName"] = "high"  # not a field Trainer's patches take
    assert schemacheck.admit(trainjob_crd, misplaced)
    # CEL: the trainer block is immutable, and the name a DNS-1035 label.
    changed = copy.deepcopy(tj)
    changed["spec"]["trainer"]["numNodes"] = 7
    assert any("immutable" in e for e in schemacheck.admit(trainjob_crd, changed, old=tj))
    bad_name = copy.deepcopy(tj)
    bad_name["metadata"]["name"] = "Train.Job"
    assert any("RFC 1035" in e for e in schemacheck.admit(trainjob_crd, bad_name))


# --- what a TrainJob cannot carry is refused, not dropped -------------------------------------


@pytest.mark.parametrize(
    "change, field",
    [
        ({"resources": {"priorityClassName": "high"}}, "priorityClassName"),
        ({"images": {"pullPolicy": "Always"}}, "pullPolicy"),
        ({"scheduling": {"volcano": {"priorityClass": "high"}}}, "volcano.priorityClass"),
    ],
)
def test_what_the_trainjob_cannot_carry_is_a_problem(manifest, change, field):
    for key, value in change.items():
        manifest["spec"].setdefault(key, {}).update(value)
    run = Run.from_body(manifest)
    (problem,) = builders.backend_problems(run, SETTINGS)
    assert field in problem and "\n" not in problem
    assert builders.backend_problems(run, Settings()) == []  # the PyTorchJob carries it


# --- the chart's runtime ------------------------------------------------------------------


def test_chart_runtime_is_admitted_by_its_crd(runtime, runtime_crds):
    assert schemacheck.admit(runtime_crds["ClusterTrainingRuntime"], runtime) == []
    assert runtime["metadata"]["name"] == Settings().training_runtime
    assert runtime["spec"]["mlPolicy"]["torch"] == {}
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == trainjob.NODE
    # Trainer counts the nodes of the job labelled as the trainer step.
    assert job["template"]["metadata"]["labels"] == {
        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"
    }
    (c,) = job["template"]["spec"]["template"]["spec"]["containers"]
    assert c["name"] == trainjob.NODE
    # A TrainJob without a command runs the same entrypoint as the operator's.
    assert (c["command"], c["args"]) == builders.trainer_command()
    assert c["imagePullPolicy"] == trainjob.RUNTIME_PULL_POLICY
    assert c["image"] == DEFAULT_TRAINER_IMAGE  # the runs' default, so the two never drift


def test_namespaced_chart_ships_a_runtime_per_namespace(runtime_crds):
    objs = helm_template("backend=trainjob", "operator.watchNamespaces={a,b}")
    runtimes = [o for o in objs if o["kind"].endswith("TrainingRuntime")]
    assert {(o["kind"], o["metadata"]["namespace"]) for o in runtimes} == {
        ("TrainingRuntime", "a"),
        ("TrainingRuntime", "b"),
    }
    for rt in runtimes:
        assert schemacheck.admit(runtime_crds["TrainingRuntime"], rt) == []
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--training-runtime-kind=TrainingRuntime" in args


def test_volcano_runtime_is_the_same_runtime_gang_scheduled(runtime, runtime_crds):
    objs = helm_template("backend=trainjob", "trainingRuntime.volcano=true")
    runtimes = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ClusterTrainingRuntime"}
    assert sorted(runtimes) == ["diffar-torch", "diffar-torch-volcano"]
    gang = runtimes["diffar-torch-volcano"]
    assert schemacheck.admit(runtime_crds["ClusterTrainingRuntime"], gang) == []
    assert gang["spec"]["podGroupPolicy"] == {"volcano": {}}
    assert gang["spec"]["template"] == runtime["spec"]["template"]
    assert "podGroupPolicy" not in runtime["spec"]


def test_runtime_check_is_not_vacuous(runtime, runtime_crds):
    crd = runtime_crds["ClusterTrainingRuntime"]
    two = copy.deepcopy(runtime)
    two["spec"]["mlPolicy"]["mpi"] = {}
    assert any("Only one" in e for e in schemacheck.admit(crd, two))
    typo = copy.deepcopy(runtime)
    typo["spec"]["template"]["spec"]["replicatedJob"] = []
    assert schemacheck.admit(crd, typo)


def _merge_by(key: str, base: list[dict], patch: list[dict], merge_item) -> list[dict]:
    out = [copy.deepcopy(b) for b in base]
    for p in patch:
        mine = next((o for o in out if o[key] == p[key]), None)
        if mine is None:
            out.append(copy.deepcopy(p))
        else:
            merge_item(mine, p)
    return out


def _merge_dict(base: dict, patch: dict) -> None:
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge_dict(base[k], v)
        else:
            base[k] = copy.deepcopy(v)


def _composed_pod(runtime: dict, tj: dict) -> dict:
    """The node pod Trainer builds: the runtime's template, the TrainJob's patch merged in by
    the strategic-merge keys of core/v1 (volumes and containers by name, mounts by path), then
    the trainer block and the torch plugin's PET_* variables on container `node`."""
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    template = copy.deepcopy(job["template"]["spec"]["template"])
    spec = template["spec"]
    (patch,) = tj["spec"]["runtimePatches"]
    (pjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    ptemplate = pjob["template"]["spec"]["template"]
    _merge_dict(template.setdefault("metadata", {}), ptemplate.get("metadata", {}))
    pspec = ptemplate["spec"]

    def merge_container(c: dict, p: dict) -> None:
        c["volumeMounts"] = _merge_by(
            "mountPath", c.get("volumeMounts", []), p.get("volumeMounts", []), _merge_dict
        )

    spec["volumes"] = _merge_by(
        "name", spec.get("volumes", []), pspec.get("volumes", []), _merge_dict
    )
    spec["containers"] = _merge_by(
        "name", spec["containers"], pspec.get("containers", []), merge_container
    )
    for key in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets"):
        if key in pspec:
            spec[key] = copy.deepcopy(pspec[key])
    (node,) = [c for c in spec["containers"] if c["name"] == trainjob.NODE]
    t = tj["spec"]["trainer"]
    node.update(
        image=t["image"], command=t["command"], args=t["args"], resources=t["resourcesPerNode"]
    )
    node["env"] = [*t["env"], *({"name": n, "value": "1"} for n in sorted(RESERVED))]
    return template


@pytest.mark.parametrize("manifest", CASES)
def test_composed_trainer_pod_is_a_valid_pod(manifest, runtime):
    run = Run.from_body(manifest)
    template = _composed_pod(runtime, build(manifest))
    doc = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "node"},
        "template": template,
    }
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    spec = template["spec"]
    (node,) = spec["containers"]
    volumes = {v["name"] for v in spec["volumes"]}
    assert {m["name"] for m in node["volumeMounts"]} <= volumes
    mounts = {m["mountPath"]: m["name"] for m in node["volumeMounts"]}
    assert mounts == {"/etc/diffar": "config", "/dev/shm": "dshm", "/var/cache/diffar": "cache"}
    dshm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert dshm["emptyDir"] == {
        "medium": "Memory",
        "sizeLimit": str(run.spec.resources.sharedMemory),
    }
    # The same security as the PyTorchJob backend's pods: Pod Security "restricted".
    assert violations(spec) == []
    assert spec["securityContext"] == builders.POD_SECURITY_CONTEXT
    assert node["securityContext"] == builders.CONTAINER_SECURITY_CONTEXT
    assert spec["automountServiceAccountToken"] is False
    # The PodMonitor finds rank 0 by these labels and the port named metrics.
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"
    assert {p["name"]: p["containerPort"] for p in node["ports"]}["metrics"] == 9400


# --- `diffar render --backend` -----------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_renders_under_both_backends(path, trainjob_crd, pytorchjob_crd):
    manifest = load_yaml(path)
    run = Run.from_body(manifest)
    for backend, kind in (("pytorchjob", "PyTorchJob"), ("trainjob", "TrainJob")):
        settings = Settings(backend=backend)
        assert builders.backend_problems(run, settings) == []
        kinds = [o["kind"] for o in builders.render(run, settings)]
        assert kinds[:2] == ["ConfigMap", kind]
    tj = build(manifest)
    assert schemacheck.admit(trainjob_crd, tj) == []


def test_render_cli_prints_a_valid_trainjob(trainjob_crd):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffar.operator.cli",
            "render",
            "--backend",
            "trainjob",
            "examples/diffusion-100m.yaml",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    objs = list(yaml.safe_load_all(proc.stdout))
    assert [o["kind"] for o in objs] == ["ConfigMap", "TrainJob", "Job"]
    assert schemacheck.admit(trainjob_crd, objs[1]) == []


def test_render_cli_refuses_what_a_trainjob_cannot_carry(tmp_path):
    manifest = load_yaml(EXAMPLES[0])
    manifest["spec"]["resources"]["priorityClassName"] = "high"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    cmd = [
        sys.executable,
        "-m",
        "diffar.operator.cli",
        "render",
        "--backend",
        "trainjob",
        str(path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "priorityClassName" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_backend_is_one_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "diffar.operator.cli",
        "render",
        "--backend",
        "tfjob",
        str(EXAMPLES[0]),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    env_cmd = [sys.executable, "-m", "diffar.operator.cli", "render", str(EXAMPLES[0])]
    proc = subprocess.run(
        env_cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"DIFFAR_BACKEND": "tfjob", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and "backend must be one of" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_operator_flags_are_checked_before_kopf_starts():
    base = [sys.executable, "-m", "diffar.operator.cli", "operator", "--backend"]
    proc = subprocess.run([*base, "tfjob"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    bad = [*base, "trainjob", "--training-runtime", "Bad_Name"]
    proc = subprocess.run(bad, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "diffar operator: error: training runtime name 'Bad_Name' is not valid"
    ]
