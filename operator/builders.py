"""Pure builders: a `Run` in, the Kubernetes objects the operator creates out (plain dicts).

Nothing here talks to a cluster: the kopf handlers, `diffar render` and the contract tests all
call these same functions.

Children, with deterministic names so an operator restart never duplicates them, each owned by
the run (ownerReferences, controller: true) so deleting the run deletes them:

- ConfigMap `<run>-config`: `train.json` (the resolved `TrainConfig`) and `eval.json` (the
  `EvalConfig` below). No credentials: S3 keys reach the pods through secretKeyRef only.
- PyTorchJob `<run>-train` (kubeflow.org/v1): Master (1) + Worker (nodes-1), container `pytorch`,
  `nprocPerNode` = GPUs per node, torchrun, GPU requests, /dev/shm in memory, NCCL settings,
  restartPolicy OnFailure with runPolicy.backoffLimit = spec.maxRestarts. With the operator's
  backend `trainjob`, a Kubeflow Trainer v2 TrainJob `<run>-train` instead (`trainjob.py`).
- Job `<run>-eval` (batch/v1), created once training succeeded: `diffar eval --config`; the
  evaluator writes a results summary (JSON, under 4 KiB) to its termination message.

EvalConfig (`eval.json`): the evaluator's own `diffar.evaluator.config.EvalConfig` fields, which
`diffar eval --config FILE` reads; the builder validates through that model when it is
importable. The operator fills:

| key | from |
| --- | --- |
| model_uri | spec.checkpoint.uri (the evaluator loads the checkpoint's export/model.pt) |
| name | the run's name (Pushgateway grouping job=diffar-eval, namespace=NS, run=NAME) |
| data_uri | spec.data.valUri |
| tasks, samples, limit | spec.evaluation.tasks, .mcSamples, .limit |
| output_uri | `<checkpoint.uri>/results.json` |
| pushgateway | spec.evaluation.pushgatewayUrl, else the operator's DIFFAR_PUSHGATEWAY_URL |
| seed, cache_dir, device, progress | training.seed, /var/cache/diffar, auto (cpu without GPUs), false |

Results back to the operator: the evaluator container's termination message
(`/dev/termination-log`, at most 4 KiB; the Job sets DIFFAR_TERMINATION_LOG to that path): a
compact results.json, `{"loss": x, "loss_estimator": "nll"|"elbo", "tasks": {name: acc | {"acc":
acc, ...}}, "results_uri": u}`. The operator copies it into `status.results`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from diffar.operator.api import API_VERSION
from diffar.operator.runs import (
    CACHE_DIR,
    CONFIG_DIR,
    METRICS_PORT,
    TERMINATION_LOG,
    Run,
    Settings,
    train_config,
)

TRAIN_JSON = "train.json"
EVAL_JSON = "eval.json"
PYTORCHJOB_API = "kubeflow.org/v1"
MASTER_PORT = 23456
PUSHGATEWAY_JOB = "diffar-eval"
LABEL_RUN = "diffar.io/run"
LABEL_KIND = "diffar.io/kind"
LABEL_OBJECTIVE = "diffar.io/objective"
LABEL_COMPONENT = "app.kubernetes.io/component"
ANNOTATION_SPEC_HASH = "diffar.io/spec-hash"
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"


class EvalConfigDoc(BaseModel):
    """The subset of the evaluator's EvalConfig the operator writes (same names and meaning)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_uri: str
    name: str
    data_uri: str | None
    tasks: list[str]
    samples: int
    limit: int | None = None
    output_uri: str | None
    pushgateway: str | None
    seed: int
    progress: bool = False
    cache_dir: str = CACHE_DIR
    device: str = "auto"


def grouping_key(run: Run) -> dict[str, str]:
    """The evaluator's Pushgateway group (diffar.evaluator.pushgateway: job=diffar-eval,
    namespace, run): with the namespace, same-named runs in two namespaces never share one."""
    return {"job": PUSHGATEWAY_JOB, "namespace": run.namespace, "run": run.name}


def pushgateway_url(run: Run, settings: Settings) -> str | None:
    return run.spec.evaluation.pushgatewayUrl or settings.pushgateway_url


def eval_config(run: Run, settings: Settings) -> dict[str, Any]:
    """eval.json as a dict, validated by the evaluator's own model when it is installed."""
    s = run.spec
    ckpt = (s.checkpoint.uri or "").rstrip("/")
    doc = EvalConfigDoc(
        model_uri=ckpt,
        name=run.name,
        data_uri=s.data.valUri,
        tasks=list(s.evaluation.tasks),
        samples=s.evaluation.mcSamples,
        limit=s.evaluation.limit,
        output_uri=f"{ckpt}/results.json" if ckpt else None,
        pushgateway=pushgateway_url(run, settings),
        seed=s.training.seed,
        device="auto" if s.evaluation.gpus else "cpu",
    ).model_dump(mode="json")
    try:
        from diffar.evaluator.config import EvalConfig
    except ImportError:  # the evaluator package is optional in the operator image
        return doc
    return EvalConfig.model_validate(doc).model_dump(mode="json", include=set(doc))


def spec_hash(run: Run) -> str:
    text = json.dumps(run.spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def controller_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    """The ownerReference of a child to its diffar object (a run or a study): the garbage
    collector deletes the child with it."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owner_reference(run: Run) -> dict[str, Any]:
    return controller_reference(run.kind.kind, run.name, run.uid)


def common_labels(instance: str, component: str) -> dict[str, str]:
    """The app.kubernetes.io labels of everything the operator creates."""
    return {
        "app.kubernetes.io/name": "diffar",
        "app.kubernetes.io/instance": instance,
        LABEL_COMPONENT: component,
        "app.kubernetes.io/managed-by": "diffar-operator",
    }


def labels(run: Run, component: str) -> dict[str, str]:
    return {
        **common_labels(run.name, component),
        LABEL_RUN: run.name,
        LABEL_KIND: run.kind.kind,
        LABEL_OBJECTIVE: run.objective,
    }


def metadata(run: Run, name: str, component: str, extra_labels: dict | None = None) -> dict:
    return {
        "name": name,
        "namespace": run.namespace,
        "labels": {**labels(run, component), **(extra_labels or {})},
        "annotations": {ANNOTATION_SPEC_HASH: spec_hash(run)},
        "ownerReferences": [owner_reference(run)],
    }


def build_config_map(run: Run, settings: Settings) -> dict[str, Any]:
    train = train_config(run).model_dump_json(indent=2)
    evaluation = json.dumps(eval_config(run, settings), indent=2)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(run, run.config_map_name, "config"),
        "data": {TRAIN_JSON: train + "\n", EVAL_JSON: evaluation + "\n"},
    }


def _s3_env(run: Run) -> list[dict[str, Any]]:
    s3 = run.spec.s3
    env: list[dict[str, Any]] = []
    if s3.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint})
    if s3.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": s3.region})
    if s3.credentialsSecret:
        for var, key in (
            ("AWS_ACCESS_KEY_ID", s3.accessKeyIdKey),
            ("AWS_SECRET_ACCESS_KEY", s3.secretAccessKeyKey),
        ):
            env.append(
                {
                    "name": var,
                    "valueFrom": {"secretKeyRef": {"name": s3.credentialsSecret, "key": key}},
                }
            )
    return env


def _common_env(run: Run) -> list[dict[str, Any]]:
    return [
        {"name": "DIFFAR_RUN", "value": run.name},
        {"name": "DIFFAR_KIND", "value": run.kind.kind},
        {
            "name": "DIFFAR_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *_s3_env(run),
    ]


def _resources(run: Run, gpus: int) -> dict[str, Any]:
    r = run.spec.resources
    requests: dict[str, Any] = {"cpu": str(r.cpu), "memory": str(r.memory)}
    limits: dict[str, Any] = {"memory": str(r.memory)}
    if gpus:
        requests[r.gpuResource] = str(gpus)
        limits[r.gpuResource] = str(gpus)
    return {"requests": requests, "limits": limits}


def pod_volumes(run: Run) -> list[dict[str, Any]]:
    return [
        {"name": "config", "configMap": {"name": run.config_map_name}},
        {
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": str(run.spec.resources.sharedMemory)},
        },
        {"name": "cache", "emptyDir": {"sizeLimit": str(run.spec.resources.cacheSize)}},
    ]


# The images run as uid 10001, gid 0 (Dockerfile). These settings satisfy Pod Security
# "restricted" (tests/deploy/pod_security.py checks every rendered pod against its rules), so the
# runs start in namespaces that enforce it. The root filesystem stays writable: torch and triton
# write caches under $HOME.
RUN_AS_USER = 10001
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": 0,
    "fsGroup": 0,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_mounts() -> list[dict[str, Any]]:
    return [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]


def _pod_spec(run: Run, container: dict[str, Any], restart_policy: str) -> dict[str, Any]:
    r = run.spec.resources
    pod: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "containers": [container],
        "volumes": pod_volumes(run),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
    }
    pod.update(pod_placement(run))
    if r.priorityClassName:
        pod["priorityClassName"] = r.priorityClassName
    return pod


def pod_placement(run: Run) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and pull Secrets of the run's pods (those set)."""
    r = run.spec.resources
    out: dict[str, Any] = {}
    if r.nodeSelector:
        out["nodeSelector"] = dict(r.nodeSelector)
    if r.tolerations:
        out["tolerations"] = [t.model_dump(exclude_none=True) for t in r.tolerations]
    if r.affinity:
        out["affinity"] = r.affinity.model_dump(
            mode="json", exclude_none=True, exclude_defaults=True
        )
    if run.spec.images.pullSecrets:
        out["imagePullSecrets"] = [{"name": n} for n in run.spec.images.pullSecrets]
    return out


def trainer_command() -> tuple[list[str], list[str]]:
    """torchrun, its rendezvous from the PET_* variables the training operator sets."""
    return ["torchrun"], [
        "--nnodes=$(PET_NNODES)",
        "--nproc-per-node=$(PET_NPROC_PER_NODE)",
        "--node-rank=$(PET_NODE_RANK)",
        "--master-addr=$(PET_MASTER_ADDR)",
        "--master-port=$(PET_MASTER_PORT)",
        "-m",
        "diffar.operator.cli",
        "train",
        "--config",
        f"{CONFIG_DIR}/{TRAIN_JSON}",
    ]


def trainer_container(run: Run, settings: Settings) -> dict[str, Any]:
    command, args = trainer_command()
    r = run.spec.resources
    return {
        "name": "pytorch",  # the training operator finds its container by this name
        "image": run.spec.images.trainer,
        "imagePullPolicy": run.spec.images.pullPolicy,
        "command": command,
        "args": args,
        "env": [
            *_common_env(run),
            {"name": "NCCL_DEBUG", "value": settings.nccl_debug},
            {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
            {"name": "NCCL_IB_TIMEOUT", "value": "22"},
            {"name": "OMP_NUM_THREADS", "value": "1"},
            {"name": "DIFFAR_CACHE_DIR", "value": CACHE_DIR},
        ],
        "ports": [
            {"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": _resources(run, r.gpusPerNode),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": pod_mounts(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _replica(run: Run, settings: Settings, replicas: int) -> dict[str, Any]:
    pod = _pod_spec(run, trainer_container(run, settings), "OnFailure")
    # Time for the trainer's SIGTERM checkpoint (trainer/guards.py) before the kubelet kills it.
    pod["terminationGracePeriodSeconds"] = run.spec.checkpoint.gracePeriodSeconds
    if run.spec.scheduling.volcano:
        pod["schedulerName"] = "volcano"
    return {
        "replicas": replicas,
        "restartPolicy": "OnFailure",
        "template": {
            "metadata": {"labels": labels(run, "trainer")},
            "spec": pod,
        },
    }


def initial_train_suspend(run: Run) -> bool:
    # Under Kueue the job starts suspended and Kueue unsuspends it on admission.
    return bool(run.spec.suspend or run.spec.scheduling.kueue)


def build_pytorchjob(run: Run, settings: Settings) -> dict[str, Any]:
    s = run.spec
    extra = {KUEUE_LABEL: s.scheduling.kueue.queueName} if s.scheduling.kueue else None
    run_policy: dict[str, Any] = {
        "cleanPodPolicy": "None",
        "backoffLimit": s.maxRestarts,
        "suspend": initial_train_suspend(run),
    }
    if s.scheduling.volcano:
        policy: dict[str, Any] = {"minAvailable": s.resources.nodes}
        if s.scheduling.volcano.queue:
            policy["queue"] = s.scheduling.volcano.queue
        if s.scheduling.volcano.priorityClass:
            policy["priorityClass"] = s.scheduling.volcano.priorityClass
        run_policy["schedulingPolicy"] = policy
    replicas = {"Master": _replica(run, settings, 1)}
    if s.resources.nodes > 1:
        replicas["Worker"] = _replica(run, settings, s.resources.nodes - 1)
    return {
        "apiVersion": PYTORCHJOB_API,
        "kind": "PyTorchJob",
        "metadata": metadata(run, run.train_job_name, "trainer", extra),
        "spec": {
            "nprocPerNode": str(s.resources.gpusPerNode),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replicas,
        },
    }


def build_eval_job(run: Run, settings: Settings) -> dict[str, Any]:
    s = run.spec
    container = {
        "name": "evaluator",
        "image": s.images.evaluator,
        "imagePullPolicy": s.images.pullPolicy,
        "command": ["diffar"],
        "args": ["eval", "--config", f"{CONFIG_DIR}/{EVAL_JSON}"],
        "env": [
            *_common_env(run),
            {"name": "DIFFAR_CACHE_DIR", "value": CACHE_DIR},
            {"name": "DIFFAR_TERMINATION_LOG", "value": TERMINATION_LOG},
        ],
        "resources": _resources(run, s.evaluation.gpus),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": pod_mounts(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    extra = {KUEUE_LABEL: s.scheduling.kueue.queueName} if s.scheduling.kueue else None
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(run, run.eval_job_name, "evaluator", extra),
        "spec": {
            "backoffLimit": 2,
            "suspend": bool(s.suspend or s.scheduling.kueue),
            "template": {
                "metadata": {"labels": labels(run, "evaluator")},
                "spec": _pod_spec(run, container, "Never"),
            },
        },
    }


def train_kind(settings: Settings) -> str:
    """The kind of the training child under the operator's backend."""
    return "TrainJob" if settings.backend == "trainjob" else "PyTorchJob"


def build_train_job(run: Run, settings: Settings) -> dict[str, Any]:
    """The training child: a PyTorchJob, or with backend trainjob a Trainer v2 TrainJob."""
    if settings.backend == "trainjob":
        from diffar.operator.trainjob import build_trainjob

        return build_trainjob(run, settings)
    return build_pytorchjob(run, settings)


def train_suspend_patch(settings: Settings, value: bool) -> dict[str, Any]:
    if settings.backend == "trainjob":
        from diffar.operator.trainjob import suspend_patch

        return suspend_patch(value)
    return {"spec": {"runPolicy": {"suspend": value}}}


def backend_problems(run: Run, settings: Settings) -> list[str]:
    """What the run asks for that the operator's backend cannot carry."""
    if settings.backend == "trainjob":
        from diffar.operator.trainjob import problems

        return problems(run)
    return []


def render(run: Run, settings: Settings, *, include_eval: bool = True) -> list[dict[str, Any]]:
    """Every object the operator creates for a run, in creation order."""
    objs = [build_config_map(run, settings), build_train_job(run, settings)]
    if include_eval and run.spec.evaluation.enabled:
        objs.append(build_eval_job(run, settings))
    return objs
