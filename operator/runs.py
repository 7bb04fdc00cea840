"""A run as the operator sees it: parsed, validated and planned, with no cluster access.

`Run.from_body(body)` parses a DiffusionRun/ARRun object (a dict, as kopf or `yaml.safe_load`
gives it) through the pydantic models of `diffar.operator.api`. `validate(run)` returns what the
schema cannot catch (unknown preset, batch not divisible by the ranks, too few tokens, ...).
`train_config(run)` maps the CRD spec onto the trainer's `TrainConfig`; `total_steps` is the
trainer's own arithmetic.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from diffar.operator.api import (
    API_VERSION,
    DNS1035,
    DNS1123_SUBDOMAIN,
    KINDS,
    MAX_RUN_NAME,
    ARRunSpec,
    DiffusionRunSpec,
    Kind,
    RunSpec,
)
from diffar.trainer.errors import UserError
from diffar.trainer.plan import sequences_per_epoch, total_steps

CONFIG_DIR = "/etc/diffar"
CACHE_DIR = "/var/cache/diffar"
METRICS_PORT = 9400
TERMINATION_LOG = "/dev/termination-log"
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


class SpecError(UserError):
    """A run manifest the operator cannot act on; str() lists every problem, in one line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


BACKENDS = ("pytorchjob", "trainjob")
RUNTIME_KINDS = ("ClusterTrainingRuntime", "TrainingRuntime")
# Rank 0's metrics endpoint by backend: the PyTorchJob Master's Service, or the pod's DNS name
# under the JobSet's headless Service (subdomain = the TrainJob's name, job "node", index 0).
METRICS_URL_TEMPLATES = {
    "pytorchjob": "http://{job}-master-0.{namespace}.svc:{port}/metrics",
    "trainjob": "http://{job}-node-0-0.{job}.{namespace}.svc:{port}/metrics",
}


@dataclass(frozen=True)
class Settings:
    """Operator-wide settings, from the environment of the operator's Deployment.

    `backend` is what trains: a Kubeflow training operator PyTorchJob, or a Kubeflow Trainer v2
    TrainJob on the (Cluster)TrainingRuntime `training_runtime` that the chart ships.
    `diffar operator --backend` sets DIFFAR_BACKEND, so kopf's handlers module, which registers
    its watches at import, reads the same value."""

    pushgateway_url: str | None = None
    metrics_url_template: str = ""  # empty: the backend's METRICS_URL_TEMPLATES entry
    progress_interval: float = 30.0
    nccl_debug: str = "WARN"
    backend: str = "pytorchjob"
    training_runtime: str = "diffar-torch"
    training_runtime_kind: str = "ClusterTrainingRuntime"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.training_runtime_kind not in RUNTIME_KINDS:
            raise UserError(
                f"training runtime kind must be one of {', '.join(RUNTIME_KINDS)}, "
                f"not {self.training_runtime_kind!r}"
            )
        if not re.match(DNS1123_SUBDOMAIN, self.training_runtime):
            raise UserError(f"training runtime name {self.training_runtime!r} is not valid")

    def metrics_template(self) -> str:
        return self.metrics_url_template or METRICS_URL_TEMPLATES[self.backend]

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        defaults = cls()
        return cls(
            pushgateway_url=env.get("DIFFAR_PUSHGATEWAY_URL") or None,
            metrics_url_template=env.get("DIFFAR_METRICS_URL_TEMPLATE") or "",
            progress_interval=float(
                env.get("DIFFAR_PROGRESS_INTERVAL", defaults.progress_interval)
            ),
            nccl_debug=env.get("DIFFAR_NCCL_DEBUG", defaults.nccl_debug),
            backend=env.get("DIFFAR_BACKEND") or defaults.backend,
            training_runtime=env.get("DIFFAR_TRAINING_RUNTIME") or defaults.training_runtime,
            training_runtime_kind=env.get("DIFFAR_TRAINING_RUNTIME_KIND")
            or defaults.training_runtime_kind,
        )


@dataclass(frozen=True)
class Run:
    kind: Kind
    name: str
    namespace: str
    uid: str
    generation: int
    spec: RunSpec
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def objective(self) -> str:
        return self.kind.objective

    @property
    def config_map_name(self) -> str:
        return f"{self.name}-config"

    @property
    def train_job_name(self) -> str:
        return f"{self.name}-train"

    @property
    def eval_job_name(self) -> str:
        return f"{self.name}-eval"

    @property
    def world_size(self) -> int:
        return self.spec.resources.nodes * self.spec.resources.gpusPerNode

    @classmethod
    def from_body(cls, body: dict[str, Any], *, namespace: str | None = None) -> Run:
        if not isinstance(body, dict):
            raise SpecError(["a run manifest must be a mapping"])
        kind_name = body.get("kind")
        if kind_name not in KINDS:
            raise SpecError([f"kind must be one of {', '.join(sorted(KINDS))}, not {kind_name!r}"])
        kind = KINDS[kind_name]
        meta, name, spec = parse_object(body, kind.spec_model, _name_problems)
        return cls(
            kind=kind,
            name=name,
            namespace=meta.get("namespace") or namespace or "default",
            uid=meta.get("uid") or PLACEHOLDER_UID,
            generation=int(meta.get("generation") or 1),
            spec=spec,
            labels=dict(meta.get("labels") or {}),
        )


def parse_object(body: dict[str, Any], spec_model, name_problems) -> tuple[dict, str, Any]:
    """The apiVersion, metadata.name and spec of a diffar object whose kind is checked: its
    (metadata, name, validated spec), or a SpecError listing every problem found."""
    if body.get("apiVersion") != API_VERSION:
        raise SpecError([f"apiVersion must be {API_VERSION}, not {body.get('apiVersion')!r}"])
    meta = body.get("metadata") or {}
    name = meta.get("name") or ""
    problems = name_problems(name)
    raw_spec = body.get("spec")
    if not isinstance(raw_spec, dict):
        raise SpecError([*problems, "spec is required and must be a mapping"])
    try:
        spec = spec_model.model_validate(raw_spec)
    except ValidationError as e:
        raise SpecError(problems + format_validation(e, prefix="spec")) from None
    if problems:
        raise SpecError(problems)
    return meta, name, spec


def _name_problems(name: str) -> list[str]:
    if not name:
        return ["metadata.name is required"]
    problems = []
    if len(name) > MAX_RUN_NAME:
        problems.append(
            f"metadata.name {name!r} is {len(name)} characters; at most {MAX_RUN_NAME} leave "
            "room for the children's suffixes"
        )
    if not re.match(DNS1035, name):
        problems.append(
            f"metadata.name {name!r} is not a DNS-1035 label (lower-case letters, digits and "
            "'-', starting with a letter)"
        )
    return problems


def format_validation(e: ValidationError, *, prefix: str) -> list[str]:
    out = []
    for err in e.errors():
        # A map key is user text: quoted when it holds anything unprintable, so the error
        # stays one line.
        loc = [
            str(p) if str(p).isprintable() else repr(str(p))
            for p in err["loc"]
            # union members' tags, not fields (a field may be called "interval")
            if str(p) not in ("int", "str") and not str(p).startswith(("constrained-", "function-"))
        ]
        where = ".".join([prefix, *loc])
        out.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return out


def planned_steps(run: Run) -> int:
    s = run.spec
    steps = total_steps(s.data.uniqueTokens, s.data.epochs, s.model.seqLen, s.training.globalBatch)
    if s.training.maxSteps is not None:
        steps = min(steps, s.training.maxSteps)
    return steps


def train_config(run: Run):  # -> diffar.trainer.config.TrainConfig
    """Map the CRD spec (camelCase) onto the trainer's TrainConfig (snake_case)."""
    from diffar.trainer.config import (
        ARConfig,
        CheckpointConfig,
        DataConfig,
        DiffusionConfig,
        MetricsConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
        ValidationConfig,
    )

    s = run.spec
    diffusion = (
        DiffusionConfig(mask_eps=s.diffusion.maskEps)
        if isinstance(s, DiffusionRunSpec)
        else DiffusionConfig()
    )
    ar = ARConfig(input_mask_rate=s.ar.inputMaskRate) if isinstance(s, ARRunSpec) else ARConfig()
    return TrainConfig(
        name=run.name,
        objective=run.objective,
        model=ModelConfig(
            preset=s.model.preset,
            dim=s.model.dim,
            n_layers=s.model.layers,
            n_heads=s.model.heads,
            seq_len=s.model.seqLen,
            vocab_size=s.model.vocabSize,
            dropout=s.training.dropout,
        ),
        data=DataConfig(
            train_uri=s.data.trainUri,
            val_uri=s.data.valUri,
            unique_tokens=s.data.uniqueTokens,
            cache_dir=CACHE_DIR,
        ),
        epochs=s.data.epochs,
        global_batch=s.training.globalBatch,
        micro_batch=s.training.microBatch,
        max_steps=s.training.maxSteps,
        optim=OptimConfig(
            lr=s.training.lr,
            min_lr=s.training.minLr,
            warmup_fraction=s.training.warmupFraction,
            weight_decay=s.training.weightDecay,
            grad_clip=s.training.gradClip,
        ),
        diffusion=diffusion,
        ar=ar,
        precision=s.training.precision,
        zero_stage=s.training.zeroStage,
        max_nonfinite_steps=s.training.maxNonfiniteSteps,
        seed=s.training.seed,
        checkpoint=CheckpointConfig(
            dir=s.checkpoint.uri, interval=s.checkpoint.interval, keep=s.checkpoint.keep
        ),
        validation=ValidationConfig(
            interval=s.validation.interval, max_tokens=s.validation.maxTokens
        ),
        metrics=MetricsConfig(port=METRICS_PORT, log_interval=10),
    )


def validate(run: Run, *, local: bool = False) -> list[str]:
    """Problems the CRD schema cannot catch; an empty list means the run can start.
    `local`: for `diffar run --local`, where relative paths name files on this machine."""
    from diffar.trainer.config import ConfigError
    from diffar.trainer.presets import PRESETS

    s = run.spec
    problems: list[str] = []
    if s.model.preset is not None and s.model.preset not in PRESETS:
        problems.append(
            f"spec.model.preset {s.model.preset!r} is unknown; known presets: {', '.join(PRESETS)}"
        )
    elif s.model.preset is None and None in (s.model.dim, s.model.layers, s.model.heads):
        problems.append("spec.model: set preset, or all of dim, layers and heads")
    else:
        try:
            cfg = train_config(run)
        except ValidationError as e:
            problems += format_validation(e, prefix="spec (as TrainConfig)")
        else:
            try:
                # A local run's world is spec.local.processes, which the local runner checks.
                if not local:
                    cfg.check_world_size(run.world_size)
            except ConfigError as e:
                problems.append(
                    f"spec.training: {e} (nodes {s.resources.nodes} x gpusPerNode "
                    f"{s.resources.gpusPerNode})"
                )
    if s.training.microBatch > s.training.globalBatch:
        problems.append(
            f"spec.training.microBatch {s.training.microBatch} exceeds globalBatch "
            f"{s.training.globalBatch}"
        )
    if s.training.minLr > s.training.lr:
        problems.append(f"spec.training.minLr {s.training.minLr} exceeds lr {s.training.lr}")
    seqs = sequences_per_epoch(s.data.uniqueTokens, s.model.seqLen)
    if seqs == 0:
        problems.append(
            f"spec.data.uniqueTokens {s.data.uniqueTokens} is too few for one sequence of "
            f"seqLen {s.model.seqLen} (needs at least {s.model.seqLen + 1})"
        )
    elif (
        total_steps(s.data.uniqueTokens, s.data.epochs, s.model.seqLen, s.training.globalBatch) < 1
    ):
        problems.append(
            f"the run has no optimizer step: epochs {s.data.epochs} x {seqs} sequences per epoch "
            f"is less than one globalBatch of {s.training.globalBatch}"
        )
    if s.evaluation.enabled and not s.data.valUri:
        problems.append("spec.evaluation needs spec.data.valUri (or evaluation.enabled: false)")
    if s.evaluation.enabled and not s.checkpoint.uri and not local:
        problems.append(
            "spec.evaluation reads the trained model from spec.checkpoint.uri: set it "
            "(or evaluation.enabled: false)"
        )
    if s.scheduling.kueue and s.scheduling.volcano:
        problems.append("spec.scheduling: choose one of kueue and volcano")
    if not local:
        for where, uri in (
            ("spec.data.trainUri", s.data.trainUri),
            ("spec.data.valUri", s.data.valUri),
            ("spec.checkpoint.uri", s.checkpoint.uri),
        ):
            if uri and not uri.startswith("s3://"):
                what = "a file:// URI" if uri.startswith("file:") else "a relative path"
                problems.append(
                    f"{where} {uri!r} is {what}, which only `diffar run --local` reads (no "
                    "volume is mounted into the run's pods); on a cluster use s3://"
                )
    return problems


# The spec fields an update may not change (the CRD's transition rules, mirrored for offline
# checks: `self == oldSelf` on these objects, and checkpoint.uri's presence and value).
IMMUTABLE = ("model", "data", "training", "diffusion")


def transition_problems(old: RunSpec, new: RunSpec) -> list[str]:
    """What the API server refuses in an update from `old` to `new` (both parsed specs)."""
    problems = [
        f"spec.{name} is immutable: it defines the experiment; create a new run"
        for name in IMMUTABLE
        if getattr(old, name, None) != getattr(new, name, None)
    ]
    if old.checkpoint.uri != new.checkpoint.uri:
        problems.append(
            "spec.checkpoint.uri is immutable (it cannot be changed, removed or added): it "
            "holds the run's checkpoints; create a new run"
        )
    return problems
