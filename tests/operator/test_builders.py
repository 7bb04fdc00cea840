"""Builders: a run in, the exact children out (unit tests; the schemas are in test_contract)."""

from __future__ import annotations

import copy
import json

import pytest
from testsupport.manifests import run_examples

from diffar.operator import builders
from diffar.operator.runs import Run, Settings, planned_steps, total_steps, train_config
from diffar.trainer.config import parse_config

from .conftest import ROOT

SETTINGS = Settings(pushgateway_url="http://pushgateway.monitoring:9091")


def run_of(manifest: dict) -> Run:
    return Run.from_body(manifest)


def containers(job: dict, replica: str = "Master") -> list[dict]:
    return job["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]["containers"]


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_train_config_round_trips_through_the_trainers_validation(manifest):
    cm = builders.build_config_map(run_of(manifest), SETTINGS)
    cfg = parse_config(json.loads(cm["data"]["train.json"]))
    assert cfg.objective == "mdm" and cfg.name == "mdm-small"
    assert (cfg.model.dim, cfg.model.n_layers, cfg.model.n_heads) == (64, 2, 4)  # preset tiny
    assert cfg.model.seq_len == 128 and cfg.data.unique_tokens == 1_000_000
    assert cfg.global_batch == 32 and cfg.micro_batch == 4 and cfg.epochs == 4
    assert cfg.optim.lr == 2e-4 and cfg.optim.min_lr == 2e-5 and cfg.optim.warmup_fraction == 0.01
    assert cfg.diffusion.mask_eps == 1e-3 and cfg.checkpoint.dir == "s3://runs/mdm-small/ckpt"
    assert cfg.metrics.port == 9400
    cfg.check_world_size(8)


def test_explicit_dims_override_and_ar_objective(manifest):
    manifest["kind"] = "ARRun"
    manifest["spec"]["model"] = {"preset": "tiny", "layers": 3, "seqLen": 64}
    cfg = train_config(run_of(manifest))
    assert cfg.objective == "ar" and cfg.model.n_layers == 3 and cfg.model.dim == 64


def test_eval_config_is_the_evaluators(manifest):
    doc = builders.eval_config(run_of(manifest), SETTINGS)
    assert doc == {
        "model_uri": "s3://runs/mdm-small/ckpt",
        "name": "mdm-small",
        "data_uri": "s3://data/val",
        "tasks": [
            "arc_easy",
            "boolq",
            "copa",
            "hellaswag",
            "piqa",
            "winogrande",
            "sciq",
            "lambada",
        ],
        "samples": 32,
        "limit": None,
        "output_uri": "s3://runs/mdm-small/ckpt/results.json",
        "pushgateway": "http://pushgateway.monitoring:9091",
        "seed": 1234,
        "progress": False,
        "cache_dir": "/var/cache/diffar",
        "device": "auto",
    }
    try:
        from diffar.evaluator.config import EvalConfig
    except ImportError:  # the evaluator package is optional
        return
    EvalConfig.model_validate(doc)


def test_pytorchjob_shape(manifest):
    job = builders.build_pytorchjob(run_of(manifest), SETTINGS)
    assert job["metadata"]["name"] == "mdm-small-train"
    assert job["metadata"]["namespace"] == "research"
    assert job["spec"]["nprocPerNode"] == "4"
    rp = job["spec"]["runPolicy"]
    assert rp == {"cleanPodPolicy": "None", "backoffLimit": 3, "suspend": False}
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    for name in ("Master", "Worker"):
        assert replicas[name]["restartPolicy"] == "OnFailure"
        (c,) = containers(job, name)
        assert c["name"] == "pytorch"
        assert c["command"] == ["torchrun"]
        assert c["args"][-5:] == [
            "-m",
            "diffar.operator.cli",
            "train",
            "--config",
            "/etc/diffar/train.json",
        ]
        assert "--nproc-per-node=$(PET_NPROC_PER_NODE)" in c["args"]
        assert c["resources"]["requests"]["nvidia.com/gpu"] == "4"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
        e = env(c)
        assert e["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
            "name": "s3-keys",
            "key": "AWS_ACCESS_KEY_ID",
        }
        assert e["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-keys"
        assert "value" not in e["AWS_SECRET_ACCESS_KEY"]
        assert e["AWS_ENDPOINT_URL"]["value"] == "http://s3.local:8333"
        assert e["TORCH_NCCL_ASYNC_ERROR_HANDLING"]["value"] == "1"
        assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in c["ports"]
        pod = replicas[name]["template"]["spec"]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/dev/shm", "/etc/diffar", "/var/cache/diffar"} <= mounts
    one = copy.deepcopy(manifest)
    one["spec"]["resources"]["nodes"] = 1
    assert (
        "Worker"
        not in builders.build_pytorchjob(run_of(one), SETTINGS)["spec"]["pytorchReplicaSpecs"]
    )


def test_placement_and_scheduling(manifest):
    r = manifest["spec"]["resources"]
    r.update(
        nodeSelector={"gpu": "h100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        priorityClassName="research",
        gpuResource="amd.com/gpu",
    )
    manifest["spec"]["scheduling"] = {"volcano": {"queue": "gpus"}}
    job = builders.build_pytorchjob(run_of(manifest), SETTINGS)
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["priorityClassName"] == "research" and pod["schedulerName"] == "volcano"
    assert containers(job)[0]["resources"]["requests"]["amd.com/gpu"] == "4"
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2, "queue": "gpus"}
    manifest["spec"]["scheduling"] = {"kueue": {"queueName": "team-a"}}
    run = run_of(manifest)
    job = builders.build_pytorchjob(run, SETTINGS)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["runPolicy"]["suspend"] is True
    ev = builders.build_eval_job(run, SETTINGS)
    assert ev["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert ev["spec"]["suspend"] is True


def test_eval_job(manifest):
    ev = builders.build_eval_job(run_of(manifest), SETTINGS)
    assert ev["metadata"]["name"] == "mdm-small-eval"
    spec = ev["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    assert c["command"] == ["diffar"] and c["args"] == ["eval", "--config", "/etc/diffar/eval.json"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert env(c)["DIFFAR_TERMINATION_LOG"]["value"] == "/dev/termination-log"


def test_children_are_owned_and_labelled(manifest):
    manifest["metadata"]["uid"] = "abc"
    objs = builders.render(run_of(manifest), SETTINGS)
    assert [o["kind"] for o in objs] == ["ConfigMap", "PyTorchJob", "Job"]
    for obj in objs:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "diffar.io/v1alpha1",
            "kind": "DiffusionRun",
            "name": "mdm-small",
            "uid": "abc",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert obj["metadata"]["labels"]["diffar.io/run"] == "mdm-small"
    manifest["spec"]["evaluation"] = {"enabled": False}
    assert [o["kind"] for o in builders.render(run_of(manifest), SETTINGS)] == [
        "ConfigMap",
        "PyTorchJob",
    ]


def test_no_credentials_anywhere_but_secret_refs(manifest):
    text = json.dumps(builders.render(run_of(manifest), SETTINGS))
    assert "secretKeyRef" in text
    cm = builders.build_config_map(run_of(manifest), SETTINGS)
    assert "s3-keys" not in json.dumps(cm)


def test_builders_are_deterministic(manifest):
    a = builders.render(run_of(manifest), SETTINGS)
    b = builders.render(run_of(copy.deepcopy(manifest)), SETTINGS)
    assert a == b


@pytest.mark.parametrize(
    ("u", "seq", "epochs", "batch"),
    [
        (99_952_399, 2048, 50, 256),
        (99_952_399, 2048, 500, 256),
        (1_000_000, 128, 4, 32),
        (5000, 64, 0.5, 8),
    ],
)
def test_total_steps_match_the_trainers_plan(u, seq, epochs, batch, manifest):
    from diffar.trainer.plan import plan_run

    manifest["spec"]["data"].update(uniqueTokens=u, epochs=epochs)
    manifest["spec"]["model"]["seqLen"] = seq
    manifest["spec"]["training"] = {"globalBatch": batch, "microBatch": 1}
    run = run_of(manifest)
    assert planned_steps(run) == plan_run(train_config(run)).total_steps
    assert total_steps(u, epochs, seq, batch) == planned_steps(run)


def test_paper_quickstart_steps():
    # 99,952,399 tokens at L=2048: 48,804 sequences per epoch; AR 50 epochs at batch 256.
    assert total_steps(99_952_399, 50, 2048, 256) == 9532
    assert total_steps(99_952_399, 500, 2048, 256) == 95320


EXAMPLES = run_examples(ROOT)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_rendered_pod_passes_pod_security_restricted(path, tmp_path):
    """`diffar render` of every example: the trainer's and the evaluator's pods, each replica."""
    import subprocess
    import sys

    import yaml
    from testsupport.pod_security import pod_specs, violations

    out = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "render", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    objs = [o for o in yaml.safe_load_all(out) if o]
    pods = [p for o in objs for p in pod_specs(o)]
    assert {n.split("/")[0] for n, _ in pods} == {"PyTorchJob", "Job"}
    for name, pod in pods:
        assert violations(pod) == [], name
        cache = next(v for v in pod["volumes"] if v["name"] == "cache")
        assert cache["emptyDir"]["sizeLimit"] == "64Gi"


def test_the_checker_catches_what_restricted_forbids(manifest):
    from testsupport.pod_security import violations

    pod = builders.build_eval_job(run_of(manifest), SETTINGS)["spec"]["template"]["spec"]
    assert violations(pod) == []
    for breaks, control in (
        (
            lambda p: [
                p["securityContext"].pop("runAsNonRoot"),
                p["containers"][0]["securityContext"].pop("runAsNonRoot"),
            ],
            "runAsNonRoot",
        ),
        (lambda p: p["containers"][0]["securityContext"].pop("capabilities"), "drop"),
        (
            lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
            "allowPrivilegeEscalation",
        ),
        (
            lambda p: [
                p["securityContext"].pop("seccompProfile"),
                p["containers"][0]["securityContext"].pop("seccompProfile"),
            ],
            "seccompProfile",
        ),
        (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (lambda p: p.update(hostNetwork=True), "hostNetwork"),
        (lambda p: p["securityContext"].update(runAsUser=0), "runAsUser"),
    ):
        bad = copy.deepcopy(pod)
        breaks(bad)
        assert any(control in v for v in violations(bad)), control


def test_cache_size_is_a_spec_field(manifest):
    manifest["spec"]["resources"]["cacheSize"] = "200Gi"
    job = builders.build_pytorchjob(run_of(manifest), SETTINGS)
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "cache")["emptyDir"] == {
        "sizeLimit": "200Gi"
    }


def test_the_largest_admissible_run_plans_within_int64(manifest):
    """Every count is bounded so that planned steps and tokens fit the CRD's int64 status."""
    from diffar.operator import api

    manifest["spec"]["data"].update(uniqueTokens=api.MAX_UNIQUE_TOKENS, epochs=100000)
    manifest["spec"]["model"]["seqLen"] = 2
    manifest["spec"]["training"].update(globalBatch=1, microBatch=1)
    run = run_of(manifest)
    steps = planned_steps(run)
    assert steps * 1 * 2 < 2**63 and steps > 10**17


def test_sigterm_grace_and_divergence_limit_reach_the_trainer(manifest):
    """The trainer's SIGTERM checkpoint needs the pod's grace period; its divergence stop, the
    run's limit. Defaults, then values set in the manifest, under both backends."""
    from diffar.operator.trainjob import build_trainjob
    from diffar.trainer.errors import UserError

    def grace(job: dict) -> set[int]:
        if job["kind"] == "PyTorchJob":
            specs = job["spec"]["pytorchReplicaSpecs"].values()
            return {r["template"]["spec"]["terminationGracePeriodSeconds"] for r in specs}
        (patch,) = job["spec"]["runtimePatches"]
        (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        return {node["template"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]}

    run = run_of(manifest)
    assert grace(builders.build_pytorchjob(run, SETTINGS)) == {300}
    assert grace(build_trainjob(run, Settings(backend="trainjob"))) == {300}
    assert train_config(run).max_nonfinite_steps == 3
    manifest["spec"]["checkpoint"]["gracePeriodSeconds"] = 900
    manifest["spec"]["training"]["maxNonfiniteSteps"] = 1
    run = run_of(manifest)
    assert grace(builders.build_pytorchjob(run, SETTINGS)) == {900}
    assert grace(build_trainjob(run, Settings(backend="trainjob"))) == {900}
    assert train_config(run).max_nonfinite_steps == 1
    for field, bad in (
        ("checkpoint", {"gracePeriodSeconds": 5}),
        ("training", {"maxNonfiniteSteps": 0}),
    ):
        broken = copy.deepcopy(manifest)
        broken["spec"][field].update(bad)
        with pytest.raises(UserError, match=next(iter(bad))):
            run_of(broken)
