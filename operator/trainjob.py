"""Pure builder of the Kubeflow Trainer v2 backend: a `Run` in, a TrainJob (a plain dict) out.

The TrainJob (`trainer.kubeflow.org/v1alpha1`, Trainer v2.2 or later: `runtimePatches`) runs on
the (Cluster)TrainingRuntime the chart ships (`charts/diffar/templates/trainingruntime.yaml`,
default `diffar-torch`): `mlPolicy.torch`, one replicated job `node` whose container `node` is
the trainer under torchrun, a memory-backed /dev/shm, the cache volume, and JobSet restarts.
Trainer's torch plugin sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and
PET_MASTER_PORT in that container, so the torchrun command of the PyTorchJob backend works as is.

What each run sets, and where Trainer v2.3 takes it:

- image, command, env (S3 Secret refs, NCCL), GPUs/CPU/memory per node, nodes: `spec.trainer`
  (image, command, args, env, resourcesPerNode, numNodes, numProcPerNode);
- the run's ConfigMap and /dev/shm size, nodeSelector, tolerations, affinity, pull Secrets and
  the pods' labels: one entry of `spec.runtimePatches` (manager `diffar.io/operator`), patching
  the pod template of job `node` (volumes `config` and `dshm` merge by name into the runtime's);
- Kueue: the label `kueue.x-k8s.io/queue-name`, created with `spec.suspend: true`; Kueue admits
  it by unsuspending it (and adds its own runtime patch);
- Volcano: the runtime `<runtime>-volcano` (`podGroupPolicy.volcano`), the queue in the patch's
  JobSet annotation `scheduling.volcano.sh/queue-name`.

What a TrainJob cannot carry per run is refused by `problems()`, never dropped: Trainer v2.3's
patches have no priorityClassName (so no Volcano PodGroup priority either) and no
imagePullPolicy. Restarts are the runtime's (its JobSet's `failurePolicy.maxRestarts`, a chart
value), not spec.maxRestarts.
"""

from __future__ import annotations

from typing import Any

from diffar.operator import builders
from diffar.operator.runs import Run, Settings

TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_API = f"{TRAINER_GROUP}/v1alpha1"
NODE = "node"  # the replicated job and container that Trainer's torch plugin configures
PATCH_MANAGER = "diffar.io/operator"
VOLCANO_QUEUE_ANNOTATION = "scheduling.volcano.sh/queue-name"
VOLCANO_SUFFIX = "-volcano"  # the chart's gang-scheduled runtime (podGroupPolicy.volcano)
RUNTIME_PULL_POLICY = "IfNotPresent"  # the chart's runtime; a TrainJob cannot change it


def problems(run: Run) -> list[str]:
    """What a run asks for that the TrainJob backend cannot do (each a one-line message)."""
    s = run.spec
    out = []
    if s.resources.priorityClassName:
        out.append(
            "spec.resources.priorityClassName: the trainjob backend cannot set a pod priority per "
            "run (Trainer v2.3's runtime patches have no priorityClassName); use Kueue's "
            "workload priority, or the pytorchjob backend"
        )
    if s.images.pullPolicy != RUNTIME_PULL_POLICY:
        out.append(
            f"spec.images.pullPolicy {s.images.pullPolicy}: the trainjob backend pulls with its "
            f"runtime's policy ({RUNTIME_PULL_POLICY}); use an immutable tag or digest, or the "
            "pytorchjob backend"
        )
    if s.scheduling.volcano and s.scheduling.volcano.priorityClass:
        out.append(
            "spec.scheduling.volcano.priorityClass: under the trainjob backend Volcano takes the "
            "PodGroup's priority from the pods, which a TrainJob cannot set; leave it out, or use "
            "the pytorchjob backend"
        )
    return out


def runtime_name(run: Run, settings: Settings) -> str:
    """The runtime a run's TrainJob names: the Volcano variant for gang scheduling."""
    if run.spec.scheduling.volcano:
        return f"{settings.training_runtime}{VOLCANO_SUFFIX}"
    return settings.training_runtime


def _trainer(run: Run, settings: Settings) -> dict[str, Any]:
    container = builders.trainer_container(run, settings)
    r = run.spec.resources
    return {
        "image": container["image"],
        "command": container["command"],
        "args": container["args"],
        "env": container["env"],
        "numNodes": r.nodes,
        "numProcPerNode": r.gpusPerNode,
        "resourcesPerNode": container["resources"],
    }


def _pod_patch(run: Run) -> dict[str, Any]:
    """The run's part of the pod spec of job `node`; merged by name into the runtime's."""
    volumes = [v for v in builders.pod_volumes(run) if v["name"] in ("config", "dshm")]
    mounts = [m for m in builders.pod_mounts() if m["name"] == "config"]
    return {
        "volumes": volumes,
        "containers": [{"name": NODE, "volumeMounts": mounts}],
        "terminationGracePeriodSeconds": run.spec.checkpoint.gracePeriodSeconds,
        **builders.pod_placement(run),
    }


def _runtime_patch(run: Run) -> dict[str, Any]:
    node_job = {
        "name": NODE,
        "template": {
            "spec": {
                "template": {
                    "metadata": {"labels": builders.labels(run, "trainer")},
                    "spec": _pod_patch(run),
                }
            }
        },
    }
    template: dict[str, Any] = {"spec": {"replicatedJobs": [node_job]}}
    volcano = run.spec.scheduling.volcano
    if volcano and volcano.queue:
        # Trainer's volcano plugin reads the queue from the JobSet template's annotations.
        template["metadata"] = {"annotations": {VOLCANO_QUEUE_ANNOTATION: volcano.queue}}
    return {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": template}}


def build_trainjob(run: Run, settings: Settings) -> dict[str, Any]:
    s = run.spec
    extra = {builders.KUEUE_LABEL: s.scheduling.kueue.queueName} if s.scheduling.kueue else None
    return {
        "apiVersion": TRAINER_API,
        "kind": "TrainJob",
        "metadata": builders.metadata(run, run.train_job_name, "trainer", extra),
        "spec": {
            "runtimeRef": {
                "apiGroup": TRAINER_GROUP,
                "kind": settings.training_runtime_kind,
                "name": runtime_name(run, settings),
            },
            "suspend": builders.initial_train_suspend(run),
            "trainer": _trainer(run, settings),
            "runtimePatches": [_runtime_patch(run)],
        },
    }


def suspend_patch(value: bool) -> dict[str, Any]:
    # Only spec.suspend: Kueue writes its own runtimePatches entry, which a merge patch of the
    # list would replace.
    return {"spec": {"suspend": value}}
