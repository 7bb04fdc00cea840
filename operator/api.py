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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from diffar.evaluator.tasks import TASKS as EVALUATOR_TASKS
from diffar.operator.urls import BLOCKED_HOSTS_MESSAGE, BLOCKED_HOSTS_RULE, URL_PATTERN, url_problem

GROUP = "diffar.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# The longest run name: children are named <run>-train-worker-<n> (pods and Services, whose
# names are DNS-1035 labels of at most 63 characters), so 40 leaves room for 999 workers.
MAX_RUN_NAME = 40
DNS1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# ---------------------------------------------------------------------------------------------
# Field patterns and bounds: the one validation layer. Every string that reaches a pod, a URL, a
# label or an environment variable has a pattern here (no whitespace, control characters or shell
# text gets through), every count an upper bound. The same constraints become the CRD's schema
# (crdgen) and are enforced by these models with strict types (no "5" -> 5, no "true" -> True),
# so `diffar render` and the API server give the same verdict (tests/operator/test_bad_input.py).

# RFC 3986 path characters without '?' and '#' and without the shell's and the kubelet's
# metacharacters ($, parentheses, quotes, ';', '&', '!', '*'): no whitespace, control characters,
# `$(VAR)` expansion, query string or fragment.
_PATH_CHARS = r"[-A-Za-z0-9._~%=:@/+,]"
# s3://bucket/prefix, file:///abs/path, or a relative path (only `diffar run --local` reads those
# two; the operator refuses them: see CLUSTER_URI_RULE).
STORE_URI = (
    rf"^(s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9](/{_PATH_CHARS}*)?"
    rf"|file:///{_PATH_CHARS}*"
    r"|[A-Za-z0-9._][-A-Za-z0-9._~%=@/+,]*)$"
)
CLUSTER_URI_RULE = {
    "rule": "self.startsWith('s3://')",
    "message": "must be an s3:// URI on a cluster: file:// and relative paths name files on one "
    "machine and are for `diffar run --local` only",
}
# A non-negative Kubernetes quantity (no sign: requests and sizes are never negative).
QUANTITY = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
MAX_QUANTITY = 2**53  # plain-integer quantities: exact in JSON and in int64
_DNS_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
# A label key or taint key: [prefix/]name (core/v1's qualified name).
QUALIFIED_NAME = rf"^({_DNS_PREFIX}/)?{_NAME}$"
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
# An extended resource: a domain prefix is required (nvidia.com/gpu, amd.com/gpu), so a GPU
# resource can never be a standard one such as cpu, memory or hugepages-2Mi.
EXTENDED_RESOURCE = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
NOT_KUBERNETES_IO = {
    "rule": "!self.startsWith('kubernetes.io/') && !self.contains('.kubernetes.io/')",
    "message": "must not be a kubernetes.io resource: name the device plugin's extended "
    "resource, such as nvidia.com/gpu",
}
# An image reference: [registry[:port]/]path[:tag][@sha256:digest], lower-case path.
IMAGE = (
    r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]([-a-z0-9._]*[a-z0-9])?)*"
    r"(:[A-Za-z0-9_][-A-Za-z0-9_.]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
# A Secret's data key (core/v1: alphanumerics, '-', '_' and '.').
SECRET_KEY = r"^[-._A-Za-z0-9]+$"
REGION = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"
# Counts whose product (steps, tokens seen) must stay far below int64.
MAX_UNIQUE_TOKENS = 10**13
MAX_STEPS = 10**12

Quantity = (
    Annotated[int, Field(ge=0, le=MAX_QUANTITY)]
    | Annotated[str, StringConstraints(pattern=QUANTITY, max_length=64)]
)
LabelKey = Annotated[str, StringConstraints(pattern=QUALIFIED_NAME, max_length=316)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE, max_length=63)]
SecretName = Annotated[str, StringConstraints(pattern=DNS1123_SUBDOMAIN, max_length=253)]


def _rules(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


def _url_check(value: str | None) -> str | None:
    if value is not None:
        problem = url_problem(value)
        if problem:
            raise ValueError(problem)
    return value


def _unique(values: list) -> list:
    seen = []
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate entry {v!r}")
        seen.append(v)
    return values


_URL_RULES = _rules({"rule": BLOCKED_HOSTS_RULE, "message": BLOCKED_HOSTS_MESSAGE})

# The tasks the evaluator ships (its registry), so a run naming another one is refused at
# admission and by render, not after training.
TASKS: tuple[str, ...] = tuple(EVALUATOR_TASKS)
Task = Literal[TASKS]  # type: ignore[valid-type]
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
    # strict: a manifest's "8" is not 8 and "true" is not True (the API server agrees);
    # no NaN or infinity (YAML can spell them, JSON and the CRD cannot).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


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
        description="Training token shards: s3://bucket/prefix of a dataset made by "
        "`diffar data prepare` (file:///path and relative paths: `diffar run --local` only).",
        json_schema_extra=_rules(CLUSTER_URI_RULE),
    )
    valUri: str | None = Field(
        None,
        max_length=1024,
        pattern=STORE_URI,
        description="Validation token shards (s3://; file:/// for local runs); required when "
        "evaluation is enabled.",
        json_schema_extra=_rules(CLUSTER_URI_RULE),
    )
    uniqueTokens: int = Field(
        ...,
        ge=2,
        le=MAX_UNIQUE_TOKENS,
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
                {"rule": "self.minLr <= self.lr", "message": "training.minLr must not exceed lr"},
                {
                    "rule": "self.microBatch <= self.globalBatch",
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
    maxNonfiniteSteps: int = Field(
        3,
        ge=1,
        le=1000,
        description="Consecutive steps with a NaN/Inf loss or gradient norm after which the run "
        "stops with an error; a bad state is never saved, pruned or exported.",
    )
    maxSteps: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS,
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


class ARSpec(_Spec):
    """Autoregressive objective settings (ARRun only)."""

    inputMaskRate: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of input tokens replaced by the mask token in training, targets "
        "unchanged (the input-masking baseline of Gao et al., arXiv 2510.04071); 0 is plain AR. "
        "Validation scores clean inputs.",
    )


class Toleration(_Spec):
    """A pod toleration (core/v1 Toleration)."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            {
                "rule": "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "message": "a toleration with operator Exists has no value",
            },
            {
                "rule": "!has(self.tolerationSeconds) || self.effect == 'NoExecute'",
                "message": "tolerationSeconds needs effect NoExecute",
            },
        )
    )

    key: str | None = Field(
        None,
        max_length=316,
        pattern=QUALIFIED_NAME,
        description="Taint key; empty matches all keys.",
    )
    operator: Literal["Exists", "Equal"] = Field(
        "Equal", description="Exists matches any value; Equal matches value."
    )
    value: str | None = Field(
        None, max_length=63, pattern=LABEL_VALUE, description="Taint value for operator Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty tolerates all effects."
    )
    tolerationSeconds: int | None = Field(
        None,
        ge=0,
        le=10**9,
        description="For NoExecute: how long the pod stays bound after the taint.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists has no value")
        if self.tolerationSeconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


# Affinity: typed (core/v1 Affinity's fields, bounded), so a typo is refused instead of dropped
# and no object of megabytes reaches every pod.
_AFF_LIST = 16


class LabelSelectorRequirement(_Spec):
    """A label selector requirement (metav1.LabelSelectorRequirement)."""

    key: LabelKey = Field(..., description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        ..., description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] = Field(
        default_factory=list, max_length=64, description="Values for In and NotIn."
    )


class LabelSelector(_Spec):
    """A label selector (metav1.LabelSelector)."""

    matchLabels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Labels the pods must carry."
    )
    matchExpressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=_AFF_LIST, description="Label requirements, all of them."
    )


class NodeSelectorRequirement(_Spec):
    """A node selector requirement (core/v1 NodeSelectorRequirement)."""

    key: LabelKey = Field(..., description="Node label key (or field name for matchFields).")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        ..., description="In, NotIn, Exists, DoesNotExist, Gt or Lt."
    )
    values: list[LabelValue] = Field(
        default_factory=list, max_length=64, description="Values for In, NotIn, Gt and Lt."
    )


class NodeSelectorTerm(_Spec):
    """A node selector term: all its requirements hold (core/v1 NodeSelectorTerm)."""

    matchExpressions: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=_AFF_LIST, description="Requirements on node labels."
    )
    matchFields: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=_AFF_LIST, description="Requirements on node fields."
    )


class NodeSelector(_Spec):
    """Node selector terms, any of which selects a node (core/v1 NodeSelector)."""

    nodeSelectorTerms: list[NodeSelectorTerm] = Field(
        ..., min_length=1, max_length=_AFF_LIST, description="Terms, ORed."
    )


class PreferredSchedulingTerm(_Spec):
    """A weighted node preference (core/v1 PreferredSchedulingTerm)."""

    weight: int = Field(..., ge=1, le=100, description="Weight, 1-100.")
    preference: NodeSelectorTerm = Field(..., description="The preferred nodes.")


class NodeAffinity(_Spec):
    """Node affinity (core/v1 NodeAffinity)."""

    requiredDuringSchedulingIgnoredDuringExecution: NodeSelector | None = Field(
        None, description="Nodes the pods must run on."
    )
    preferredDuringSchedulingIgnoredDuringExecution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=_AFF_LIST, description="Nodes the pods prefer."
    )


class PodAffinityTerm(_Spec):
    """Pods to be near (or away from), by topology (core/v1 PodAffinityTerm)."""

    labelSelector: LabelSelector | None = Field(None, description="The pods.")
    namespaceSelector: LabelSelector | None = Field(None, description="Their namespaces.")
    namespaces: list[Annotated[str, StringConstraints(pattern=DNS1123_LABEL, max_length=63)]] = (
        Field(default_factory=list, max_length=_AFF_LIST, description="Their namespaces, by name.")
    )
    topologyKey: LabelKey = Field(..., description="Node label of the topology domain.")


class WeightedPodAffinityTerm(_Spec):
    """A weighted pod affinity term (core/v1 WeightedPodAffinityTerm)."""

    weight: int = Field(..., ge=1, le=100, description="Weight, 1-100.")
    podAffinityTerm: PodAffinityTerm = Field(..., description="The term.")


class PodAffinity(_Spec):
    """Pod affinity or anti-affinity (core/v1 PodAffinity, PodAntiAffinity)."""

    requiredDuringSchedulingIgnoredDuringExecution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=_AFF_LIST, description="Terms that must hold."
    )
    preferredDuringSchedulingIgnoredDuringExecution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=_AFF_LIST, description="Terms preferred."
    )


class Affinity(_Spec):
    """Pod scheduling affinity (core/v1 Affinity)."""

    nodeAffinity: NodeAffinity | None = Field(None, description="Node affinity.")
    podAffinity: PodAffinity | None = Field(None, description="Pod affinity.")
    podAntiAffinity: PodAffinity | None = Field(None, description="Pod anti-affinity.")


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
        pattern=EXTENDED_RESOURCE,
        description="Extended resource name of a GPU, e.g. nvidia.com/gpu or amd.com/gpu (a "
        "domain-prefixed name: never cpu, memory or another standard resource).",
        json_schema_extra=_rules(NOT_KUBERNETES_IO),
    )

    @field_validator("gpuResource")
    @classmethod
    def _extended(cls, value: str) -> str:
        if value.startswith("kubernetes.io/") or ".kubernetes.io/" in value:
            raise ValueError(NOT_KUBERNETES_IO["message"])
        return value

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
    cacheSize: Quantity = Field(
        "64Gi",
        description="Size limit of the pods' cache emptyDir (/var/cache/diffar: fetched token "
        "shards and checkpoints); the kubelet evicts a pod that writes more.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    nodeSelector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Node labels the trainer and evaluator pods require.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=64,
        description="Tolerations for GPU node taints.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    affinity: Affinity | None = Field(
        None,
        description="Pod affinity, as core/v1 Affinity (nodeAffinity, podAffinity, "
        "podAntiAffinity), typed and bounded.",
    )
    priorityClassName: str | None = Field(
        None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="PriorityClass of the trainer and evaluator pods.",
    )


class CheckpointSpec(_Spec):
    """Where the trainer saves and resumes; the evaluator reads the newest checkpoint here."""

    # On the object, not the optional field: a rule on `uri` itself would not run when the field
    # is removed (and a later edit could add another one).
    model_config = ConfigDict(
        json_schema_extra=_rules(
            {
                "rule": "has(self.uri) == has(oldSelf.uri) && "
                "(!has(self.uri) || self.uri == oldSelf.uri)",
                "message": "checkpoint.uri is immutable (it cannot be changed, removed or added): "
                "it holds the run's checkpoints; create a new run",
            }
        )
    )

    uri: str | None = Field(
        None,
        max_length=1024,
        pattern=STORE_URI,
        description="Checkpoint directory (s3://; file:/// for local runs); required for "
        "evaluation and for resuming after a restart or suspension. Immutable, and can be "
        "neither removed nor added once the run exists.",
        json_schema_extra=_rules(CLUSTER_URI_RULE),
    )
    interval: int = Field(
        1000, ge=1, le=10**9, description="Save every N optimizer steps (and at the end)."
    )
    keep: int = Field(3, ge=1, le=1000, description="Keep the newest N checkpoints.")
    gracePeriodSeconds: int = Field(
        300,
        ge=30,
        le=3600,
        description="Seconds a trainer pod has between SIGTERM (preemption, suspend, deletion) "
        "and SIGKILL (its terminationGracePeriodSeconds): the trainer saves and commits a "
        "checkpoint of the current step in that time, so allow one step plus one upload.",
    )


class EvaluationSpec(_Spec):
    """The evaluator Job that runs after training succeeds."""

    enabled: bool = Field(True, description="Run the evaluator Job after training.")
    tasks: list[Task] = Field(
        default_factory=lambda: [t for t in TASKS if t != "race"],
        max_length=len(TASKS),
        description="Downstream tasks to score (zero-shot accuracy), from the tasks the evaluator "
        "ships; no duplicates. The default is all of them: the paper's nine but RACE, which needs "
        "a data source the evaluator does not bundle.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    _tasks_unique = field_validator("tasks")(_unique)
    mcSamples: int = Field(
        32,
        ge=1,
        le=4096,
        description="Monte Carlo samples of the diffusion ELBO (validation and tasks); AR "
        "computes exact likelihoods and ignores it.",
    )
    limit: int | None = Field(
        None,
        ge=1,
        le=10**7,
        description="Score at most N instances per task (quick runs); unset: all.",
    )
    gpus: int = Field(1, ge=0, le=64, description="GPUs of the evaluator pod (0: CPU only).")
    pushgatewayUrl: str | None = Field(
        None,
        max_length=1024,
        pattern=URL_PATTERN,
        description="Prometheus Pushgateway for the final metrics, http(s)://host[:port][/path] "
        "(no user, query or fragment; no link-local or metadata host); defaults to the "
        "operator's DIFFAR_PUSHGATEWAY_URL.",
        json_schema_extra=_URL_RULES,
    )
    _pushgateway_safe = field_validator("pushgatewayUrl")(_url_check)


class ValidationSpec(_Spec):
    """Validation loss during training (exact NLL for AR, the ELBO bound for diffusion)."""

    interval: int | None = Field(
        None,
        ge=1,
        le=10**9,
        description="Validate every N optimizer steps and at the end (needs data.valUri); "
        "unset: only the evaluator measures validation loss.",
    )
    maxTokens: int = Field(
        262144, ge=2, le=10**12, description="Validation tokens used: the first N of data.valUri."
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
        pattern=URL_PATTERN,
        description="S3 endpoint URL for S3-compatible stores (MinIO, SeaweedFS), "
        "http(s)://host[:port][/path]; empty: AWS.",
        json_schema_extra=_URL_RULES,
    )
    _endpoint_safe = field_validator("endpoint")(_url_check)
    region: str | None = Field(
        None, max_length=32, pattern=REGION, description="S3 region (AWS_DEFAULT_REGION)."
    )
    credentialsSecret: str | None = Field(
        None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="Secret in the run's namespace holding the S3 keys; read by the pods through "
        "secretKeyRef, never copied. Empty: the pods' own identity (IRSA, workload identity).",
    )
    accessKeyIdKey: str = Field(
        "AWS_ACCESS_KEY_ID",
        max_length=253,
        pattern=SECRET_KEY,
        description="Key of the access key id in the Secret.",
    )
    secretAccessKeyKey: str = Field(
        "AWS_SECRET_ACCESS_KEY",
        max_length=253,
        pattern=SECRET_KEY,
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
        description="Trainer image (CUDA, DeepSpeed, the diffar package): "
        "registry/path[:tag][@sha256:digest]; pin a digest for reproducible runs.",
    )
    evaluator: str = Field(
        DEFAULT_EVALUATOR_IMAGE, max_length=512, pattern=IMAGE, description="Evaluator image."
    )
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Image pull policy of every container."
    )
    pullSecrets: list[SecretName] = Field(
        default_factory=list,
        max_length=16,
        description="Image pull Secret names in the run's namespace.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    _pull_secrets_unique = field_validator("pullSecrets")(_unique)


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

    ar: ARSpec = Field(
        default_factory=ARSpec,
        description="Autoregressive objective settings.",
        json_schema_extra=_immutable("ar"),
    )


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
    bestValLoss: float | None = Field(
        None, description="Lowest validation loss during training (nats/token)."
    )
    bestValEpoch: float | None = Field(None, description="Epoch at which bestValLoss was reached.")
    finalValLoss: float | None = Field(
        None, description="Validation loss at the end of training (nats/token)."
    )
    finalTrainLoss: float | None = Field(None, description="Training loss of the last step.")
    wallSeconds: float | None = Field(
        None, description="Training wall time in seconds (validation excluded; resumes summed)."
    )
    tokensPerSecond: float | None = Field(None, description="Mean training throughput.")


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
