"""The run API: `DiffusionRun` and `ARRun` (diffar.io/v1alpha1), as typed pydantic models.

These models are the one source of truth for the CRDs (`diffar.operator.crdgen` turns them into
OpenAPI v3 schemas, with the CEL rules and printer columns declared here) and for the operator,
which parses every run's spec through them before it builds anything. Field names are the CRD's
camelCase; every field has a description (what `kubectl explain` shows). Defaults are the
paper's (arXiv 2507.15857: Table 5 and its Megatron-DeepSpeed scripts).

Schema extras understood by the generator (put in `json_schema_extra`):
`x-kubernetes-validations` (CEL rules), `x-kubernetes-preserve-unknown-fields`,
`x-kubernetes-list-type`, `x-kubernetes-map-type`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

GROUP = "diffar.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# The longest run name: children are named <run>-train-worker-<n> (pods and Services, whose
# names are DNS-1035 labels of at most 63 characters), so 40 leaves room for 999 workers.
MAX_RUN_NAME = 40
DNS1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A store URI the trainer reads: s3://bucket/prefix or file:///absolute/path.
# s3://bucket/prefix, file:///abs/path, or a relative path (only `diffar run --local` accepts those).
STORE_URI = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file:///.*|[A-Za-z0-9._][^:]*)$"
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A resource name such as nvidia.com/gpu or amd.com/gpu (a qualified name with a prefix).
RESOURCE_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
IMAGE = r"^[^\s]+$"
Quantity = int | Annotated[str, StringConstraints(pattern=QUANTITY, max_length=64)]

TASKS = (
    "arc_easy",
    "boolq",
    "copa",
    "hellaswag",
    "piqa",
    "race",
    "winogrande",
    "sciq",
    "lambada",
)
Task = Literal[
    "arc_easy", "boolq", "copa", "hellaswag", "piqa", "race", "winogrande", "sciq", "lambada"
]
Phase = Literal["Pending", "Queued", "Training", "Evaluating", "Succeeded", "Failed", "Suspended"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]

DEFAULT_TRAINER_IMAGE = "ghcr.io/diffar/diffar-trainer:0.1.0"
DEFAULT_EVALUATOR_IMAGE = "ghcr.io/diffar/diffar-evaluator:0.1.0"


def _immutable(what: str) -> dict[str, Any]:
    return {
        "x-kubernetes-validations": [
            {
                "rule": "self == oldSelf",
                "message": f"{what} is immutable: it defines the experiment; create a new run",
            }
        ]
    }


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Spec):
    """The transformer: a named preset from the paper's grid, or explicit dimensions."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.preset) || (has(self.dim) && has(self.layers) && has(self.heads))",
                    "message": "set model.preset, or all of model.dim, model.layers and model.heads",
                }
            ]
        }
    )

    preset: str | None = Field(
        None,
        max_length=32,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Named model size (140M, 425M, or the CPU-sized nano, tiny, small, mini). "
        "dim, layers and heads override the preset's values.",
    )
    dim: int | None = Field(None, ge=8, le=65536, description="Hidden size h.")
    layers: int | None = Field(None, ge=1, le=512, description="Number of transformer blocks.")
    heads: int | None = Field(
        None, ge=1, le=512, description="Attention heads; dim / heads must be an even integer."
    )
    seqLen: int = Field(2048, ge=2, le=131072, description="Sequence length L in tokens.")
    vocabSize: int = Field(
        50257,
        ge=2,
        le=1_000_000,
        description="Tokenizer vocabulary of the data (GPT-2: 50257); the model pads it to a "
        "multiple of 64 with room for the diffusion mask token.",
    )


class DataSpec(_Spec):
    """The token data: a fixed set of U unique tokens, repeated for a number of epochs."""

    trainUri: str = Field(
        ...,
        max_length=1024,
        pattern=STORE_URI,
        description="Training token shards: s3://bucket/prefix or file:///path of a dataset "
        "made by `diffar data prepare`.",
    )
    valUri: str | None = Field(
        None,
        max_length=1024,
        pattern=STORE_URI,
        description="Validation token shards (s3:// or file:///); required when evaluation is "
        "enabled.",
    )
    uniqueTokens: int = Field(
        ...,
        ge=2,
        description="U: train on the first U tokens of the training set (the paper's quickstart "
        "uses 100M, 99952399 tokens).",
    )
    epochs: float = Field(
        ...,
        gt=0,
        le=100000,
        description="E: passes over the U unique tokens (the paper: 50 for AR, 500 for "
        "diffusion at U = 100M). Total steps = floor(E * floor((U-1)/L) / globalBatch).",
    )


class TrainingSpec(_Spec):
    """Optimisation: batch, schedule and numerics. Defaults are the paper's."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                # has(): the API server also checks these rules against the object's `default: {}`,
                # before the fields' own defaults fill it in.
                {
                    "rule": "!has(self.minLr) || !has(self.lr) || self.minLr <= self.lr",
                    "message": "training.minLr must not exceed lr",
                },
                {
                    "rule": "!has(self.microBatch) || !has(self.globalBatch) || "
                    "self.microBatch <= self.globalBatch",
                    "message": "training.microBatch must not exceed globalBatch",
                },
            ]
        }
    )

    globalBatch: int = Field(
        256, ge=1, le=1048576, description="Sequences per optimizer step, all GPUs together."
    )
    microBatch: int = Field(
        8, ge=1, le=4096, description="Sequences per GPU per forward pass (gradient accumulation)."
    )
    lr: float = Field(2e-4, gt=0, le=1, description="Peak learning rate (AdamW).")
    minLr: float = Field(2e-5, ge=0, le=1, description="Final learning rate of the cosine decay.")
    warmupFraction: float = Field(
        0.01, ge=0, lt=1, description="Linear warmup, as a fraction of the total steps."
    )
    weightDecay: float = Field(0.1, ge=0, le=10, description="AdamW weight decay.")
    gradClip: float = Field(
        1.0, ge=0, le=1000, description="Global gradient-norm clip; 0 disables clipping."
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Attention and hidden dropout.")
    seed: int = Field(1234, ge=0, le=2147483647, description="Random seed of data order and init.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Numerics: bf16, fp32, or auto (bf16 on GPUs)."
    )
    zeroStage: int = Field(1, ge=0, le=3, description="DeepSpeed ZeRO stage (0-3).")
    maxSteps: int | None = Field(
        None,
        ge=1,
        description="Stop after this many steps (the learning-rate schedule is unchanged); "
        "for smoke runs.",
    )


class DiffusionSpec(_Spec):
    """Masked-diffusion objective settings (DiffusionRun only)."""

    maskEps: float = Field(
        1e-3,
        gt=0,
        lt=1,
        description="eps in the mask rate p = (1 - eps) t + eps, t ~ U[0, 1): the smallest rate.",
    )


class Toleration(_Spec):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(None, max_length=316, description="Taint key; empty matches all keys.")
    operator: Literal["Exists", "Equal"] = Field(
        "Equal", description="Exists matches any value; Equal matches value."
    )
    value: str | None = Field(None, max_length=63, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty tolerates all effects."
    )
    tolerationSeconds: int | None = Field(
        None, ge=0, description="For NoExecute: how long the pod stays bound after the taint."
    )


class ResourcesSpec(_Spec):
    """Where and on what the trainer runs: GPU nodes and pod placement."""

    nodes: int = Field(
        1, ge=1, le=512, description="Nodes (pods): one PyTorchJob Master plus nodes-1 Workers."
    )
    gpusPerNode: int = Field(
        8, ge=1, le=64, description="GPUs per node; also torchrun's processes per node."
    )
    gpuResource: str = Field(
        "nvidia.com/gpu",
        max_length=253,
        pattern=RESOURCE_NAME,
        description="Extended resource name of a GPU, e.g. nvidia.com/gpu or amd.com/gpu.",
    )
    cpu: Quantity = Field(
        "16",
        description="CPU request per pod (a Kubernetes quantity).",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    memory: Quantity = Field(
        "128Gi",
        description="Memory request and limit per pod (a Kubernetes quantity).",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    sharedMemory: Quantity = Field(
        "32Gi",
        description="Size of the memory-backed /dev/shm (NCCL and data loader workers).",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    nodeSelector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the trainer and evaluator pods require."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=64,
        description="Tolerations for GPU node taints.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    affinity: dict[str, Any] | None = Field(
        None,
        description="Pod affinity, as core/v1 Affinity (nodeAffinity, podAffinity, "
        "podAntiAffinity); copied to the pods unchanged.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priorityClassName: str | None = Field(
        None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="PriorityClass of the trainer and evaluator pods.",
    )


class CheckpointSpec(_Spec):
    """Where the trainer saves and resumes; the evaluator reads the newest checkpoint here."""

    uri: str | None = Field(
        None,
        max_length=1024,
        pattern=STORE_URI,
        description="Checkpoint directory (s3:// or file:///); required for evaluation and for "
        "resuming after a restart or suspension.",
        json_schema_extra=_immutable("checkpoint.uri"),
    )
    interval: int = Field(1000, ge=1, description="Save every N optimizer steps (and at the end).")
    keep: int = Field(3, ge=1, le=1000, description="Keep the newest N checkpoints.")


class EvaluationSpec(_Spec):
    """The evaluator Job that runs after training succeeds."""

    enabled: bool = Field(True, description="Run the evaluator Job after training.")
    tasks: list[Task] = Field(
        default_factory=lambda: [t for t in TASKS if t != "race"],
        max_length=len(TASKS),
        description="Downstream tasks to score (zero-shot accuracy). The default is the paper's "
        "nine but RACE, which needs a data source the evaluator does not bundle.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    mcSamples: int = Field(
        32,
        ge=1,
        le=4096,
        description="Monte Carlo samples of the diffusion ELBO (validation and tasks); AR "
        "computes exact likelihoods and ignores it.",
    )
    limit: int | None = Field(
        None, ge=1, description="Score at most N instances per task (quick runs); unset: all."
    )
    gpus: int = Field(1, ge=0, le=64, description="GPUs of the evaluator pod (0: CPU only).")
    pushgatewayUrl: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^https?://[^\s]+$",
        description="Prometheus Pushgateway for the final metrics; defaults to the operator's "
        "DIFFAR_PUSHGATEWAY_URL.",
    )


class ValidationSpec(_Spec):
    """Validation loss during training (exact NLL for AR, the ELBO bound for diffusion)."""

    interval: int | None = Field(
        None,
        ge=1,
        description="Validate every N optimizer steps and at the end (needs data.valUri); "
        "unset: only the evaluator measures validation loss.",
    )
    maxTokens: int = Field(
        262144, ge=2, description="Validation tokens used: the first N of data.valUri."
    )


class LocalSpec(_Spec):
    """Settings for `diffar run --local` on one machine; the operator ignores them."""

    processes: int = Field(1, ge=1, le=64, description="Trainer processes (torchx local_cwd).")
    threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads per process (default: cores / processes)."
    )


class S3Spec(_Spec):
    """S3 store access for shards, checkpoints and results."""

    endpoint: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^https?://[^\s]+$",
        description="S3 endpoint URL for S3-compatible stores (MinIO, SeaweedFS); empty: AWS.",
    )
    region: str | None = Field(None, max_length=64, description="S3 region (AWS_DEFAULT_REGION).")
    credentialsSecret: str | None = Field(
        None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="Secret in the run's namespace holding the S3 keys; read by the pods through "
        "secretKeyRef, never copied. Empty: the pods' own identity (IRSA, workload identity).",
    )
    accessKeyIdKey: str = Field(
        "AWS_ACCESS_KEY_ID", max_length=253, description="Key of the access key id in the Secret."
    )
    secretAccessKeyKey: str = Field(
        "AWS_SECRET_ACCESS_KEY",
        max_length=253,
        description="Key of the secret access key in the Secret.",
    )


class KueueSpec(_Spec):
    """Admission through a Kueue LocalQueue."""

    queueName: str = Field(
        ...,
        max_length=63,
        pattern=DNS1123_LABEL,
        description="LocalQueue name (label kueue.x-k8s.io/queue-name); the children are created "
        "suspended and Kueue admits them.",
    )


class VolcanoSpec(_Spec):
    """Gang scheduling with Volcano: all trainer pods start together or none do."""

    queue: str | None = Field(
        None, max_length=63, pattern=DNS1123_LABEL, description="Volcano queue name."
    )
    priorityClass: str | None = Field(
        None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="PriorityClass of the PodGroup.",
    )


class SchedulingSpec(_Spec):
    """Batch scheduling: Kueue queueing, or Volcano gang scheduling (one of the two, or neither)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.kueue) && has(self.volcano))",
                    "message": "choose one of scheduling.kueue and scheduling.volcano",
                }
            ]
        }
    )

    kueue: KueueSpec | None = Field(None, description="Queue the run's Jobs in Kueue.")
    volcano: VolcanoSpec | None = Field(None, description="Gang-schedule the trainer with Volcano.")


class ImagesSpec(_Spec):
    """Container images."""

    trainer: str = Field(
        DEFAULT_TRAINER_IMAGE,
        max_length=512,
        pattern=IMAGE,
        description="Trainer image (CUDA, DeepSpeed, the diffar package).",
    )
    evaluator: str = Field(
        DEFAULT_EVALUATOR_IMAGE, max_length=512, pattern=IMAGE, description="Evaluator image."
    )
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Image pull policy of every container."
    )
    pullSecrets: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Image pull Secret names in the run's namespace.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


_SPEC_RULES = [
    {
        "rule": "!self.evaluation.enabled || has(self.data.valUri)",
        "message": "evaluation needs data.valUri (or set evaluation.enabled: false)",
    },
    {
        "rule": "!self.evaluation.enabled || has(self.checkpoint.uri)",
        "message": "evaluation reads the trained model from checkpoint.uri: set it "
        "(or set evaluation.enabled: false)",
    },
]


class RunSpec(_Spec):
    """What to train and evaluate, and where. Shared by ARRun and DiffusionRun."""

    model: ModelSpec = Field(
        ..., description="Transformer shape.", json_schema_extra=_immutable("model")
    )
    data: DataSpec = Field(
        ..., description="Unique tokens and epochs.", json_schema_extra=_immutable("data")
    )
    training: TrainingSpec = Field(
        default_factory=TrainingSpec,
        description="Batch, optimizer and numerics.",
        json_schema_extra=_immutable("training"),
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="GPU nodes and pod placement."
    )
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec, description="Checkpoint store, interval and retention."
    )
    validation: ValidationSpec = Field(
        default_factory=ValidationSpec, description="Validation loss during training."
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Evaluation after training."
    )
    s3: S3Spec = Field(default_factory=S3Spec, description="S3 endpoint and credentials.")
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Kueue or Volcano scheduling."
    )
    images: ImagesSpec = Field(default_factory=ImagesSpec, description="Container images.")
    local: LocalSpec = Field(
        default_factory=LocalSpec, description="Settings for `diffar run --local` only."
    )
    maxRestarts: int = Field(
        3,
        ge=0,
        le=100,
        description="Trainer restarts before the run fails (PyTorchJob runPolicy.backoffLimit); "
        "each restart resumes from the newest checkpoint.",
    )
    suspend: bool = Field(
        False,
        description="Suspend the run: its pods stop; setting it back to false resumes training "
        "from the newest checkpoint.",
    )


class ARRunSpec(RunSpec):
    """An autoregressive (next-token) language model run."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})


class DiffusionRunSpec(RunSpec):
    """A masked-diffusion language model run."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})

    diffusion: DiffusionSpec = Field(
        default_factory=DiffusionSpec,
        description="Masked-diffusion objective settings.",
        json_schema_extra=_immutable("diffusion"),
    )


# ---------------------------------------------------------------------------------------------
# Status


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Condition(_Status):
    """A metav1.Condition."""

    type: str = Field(..., max_length=316, description="Condition type, e.g. Ready or Training.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    observedGeneration: int | None = Field(
        None, ge=0, description="metadata.generation the condition was set for."
    )
    lastTransitionTime: str = Field(
        ...,
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    reason: str = Field(..., max_length=1024, description="CamelCase reason of the last change.")
    message: str = Field("", max_length=32768, description="Human-readable details.")


class Progress(_Status):
    """Training progress, read from the trainer's metrics endpoint."""

    step: int = Field(0, ge=0, description="Optimizer steps done.")
    totalSteps: int = Field(0, ge=0, description="Optimizer steps planned.")
    epoch: float = Field(0, ge=0, description="Epochs done over the unique tokens.")
    tokensSeen: int = Field(0, ge=0, description="Training tokens processed (repeats counted).")
    loss: float | None = Field(None, description="Last training loss.")
    summary: str = Field("", description="step/totalSteps (percent), for printer columns.")
    eta: str | None = Field(
        None,
        description="Estimated end of training (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    sampledAt: str | None = Field(
        None,
        description="When the progress was read (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )


class Results(_Status):
    """Final metrics from the evaluator."""

    valLoss: float | None = Field(
        None, description="Validation loss: exact NLL (AR) or Monte Carlo ELBO bound (diffusion)."
    )
    lossEstimator: str | None = Field(
        None, description="What valLoss is: nll (AR, exact) or elbo (diffusion, an upper bound)."
    )
    validation: dict[str, float] = Field(
        default_factory=dict,
        description="Every validation estimate, nats per token, by estimator (nll, elbo, "
        "chain_rule).",
    )
    tasks: dict[str, float] = Field(
        default_factory=dict, description="Downstream task accuracies, 0-1, by task name."
    )
    resultsUri: str | None = Field(None, description="Where the full results.json was written.")


class Children(_Status):
    """Names of the objects the run owns."""

    configMap: str | None = Field(None, description="ConfigMap with train.json and eval.json.")
    trainJob: str | None = Field(None, description="Kubeflow PyTorchJob of the training.")
    evalJob: str | None = Field(None, description="batch/v1 Job of the evaluation.")


class RunStatus(_Status):
    """Observed state of a run; written by the operator only."""

    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )

    phase: Phase | None = Field(
        None,
        description="Pending, Queued, Training, Evaluating, Succeeded, Failed or Suspended.",
    )
    objective: Literal["ar", "mdm"] | None = Field(
        None, description="Training objective: ar (autoregressive) or mdm (masked diffusion)."
    )
    reason: str | None = Field(None, description="CamelCase reason of the current phase.")
    message: str | None = Field(None, description="Human-readable details of the current phase.")
    observedGeneration: int | None = Field(
        None, ge=0, description="metadata.generation the operator last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="metav1.Conditions: Validated, Training, Evaluated, Suspended, Ready.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    children: Children = Field(default_factory=Children, description="Owned objects.")
    progress: Progress | None = Field(None, description="Training progress.")
    restarts: int = Field(0, ge=0, description="Trainer restarts seen so far.")
    lastRestartTime: str | None = Field(
        None, description="Transition time of the last restart counted (RFC 3339)."
    )
    startTime: str | None = Field(None, description="When training started (RFC 3339).")
    completionTime: str | None = Field(None, description="When the run finished (RFC 3339).")
    results: Results | None = Field(None, description="Final metrics, once evaluated.")


# ---------------------------------------------------------------------------------------------
# Kinds


class Kind(BaseModel):
    """One CRD: its names, objective and spec model."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    objective: Literal["ar", "mdm"]
    spec_model: type[RunSpec]
    description: str


KINDS: dict[str, Kind] = {
    "DiffusionRun": Kind(
        kind="DiffusionRun",
        plural="diffusionruns",
        singular="diffusionrun",
        short_names=("drun",),
        objective="mdm",
        spec_model=DiffusionRunSpec,
        description="A masked-diffusion language model trained on U unique tokens for E epochs, "
        "then evaluated (arXiv 2507.15857).",
    ),
    "ARRun": Kind(
        kind="ARRun",
        plural="arruns",
        singular="arrun",
        short_names=("arr",),
        objective="ar",
        spec_model=ARRunSpec,
        description="An autoregressive language model trained on U unique tokens for E epochs, "
        "then evaluated (arXiv 2507.15857).",
    ),
}
KIND_BY_PLURAL = {k.plural: k for k in KINDS.values()}
