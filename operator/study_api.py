"""The study API: `ScalingStudy` (diffar.io/v1alpha1), a whole data-constrained scaling study.

A study is a run template (everything an ARRun or DiffusionRun has but the model's shape and the
data's size), grid axes (objectives x models x unique tokens x epochs), a concurrency limit and a
fit section. The operator expands it into one child run per grid point (`diffar.operator.study`),
at most `maxConcurrent` of them unfinished at a time, and when they are done fits the
data-constrained scaling law (Muennighoff et al. 2023) to their results.

Like `api.py`, these models are the one source of the CRD's schema (`crdgen`), with CEL rules
declared here, and every field is bounded: a manifest is hostile until parsed.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from diffar.operator.api import (
    _SPEC_RULES,
    STORE_URI,
    CheckpointSpec,
    DiffusionSpec,
    EvaluationSpec,
    ImagesSpec,
    LocalSpec,
    ResourcesSpec,
    S3Spec,
    SchedulingSpec,
    TrainingSpec,
    ValidationSpec,
    _immutable,
)

KIND = "ScalingStudy"
PLURAL = "scalingstudies"
SINGULAR = "scalingstudy"
SHORT_NAMES = ("study",)
MAX_STUDY_NAME = 40
# Children are created and watched by the operator one by one; a grid larger than this is a
# typo (or a cluster-sized mistake), and the status lists every child.
MAX_GRID_POINTS = 512
MAX_UNIQUE_TOKENS = 10**13  # 10T tokens: beyond any corpus
MODEL_NAME = r"^[a-z0-9]{1,12}$"

Objective = Literal["ar", "mdm"]
StudyPhase = Literal["Pending", "Running", "Fitting", "Succeeded", "Failed"]
STUDY_PHASES: tuple[str, ...] = StudyPhase.__args__  # type: ignore[attr-defined]
FIT_PARAMS = ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GridModel(_Spec):
    """One model of the grid: a named preset, or explicit dimensions."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.preset) || (has(self.dim) && has(self.layers) && has(self.heads))",
                    "message": "each grid model needs a preset, or all of dim, layers and heads",
                },
                {
                    "rule": "has(self.name) || has(self.preset)",
                    "message": "a grid model given by its dimensions needs a name",
                },
            ]
        }
    )

    name: str | None = Field(
        None,
        max_length=12,
        pattern=MODEL_NAME,
        description="Short name in the children's names (lower-case letters and digits); "
        "default: the preset's name, lower-cased.",
    )
    preset: str | None = Field(
        None,
        max_length=32,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Named model size (140M, 425M, or the CPU-sized nano, tiny, small, mini); "
        "dim, layers and heads override the preset's values.",
    )
    dim: int | None = Field(None, ge=8, le=65536, description="Hidden size h.")
    layers: int | None = Field(None, ge=1, le=512, description="Number of transformer blocks.")
    heads: int | None = Field(
        None, ge=1, le=512, description="Attention heads; dim / heads must be an even integer."
    )

    @model_validator(mode="after")
    def _complete(self) -> GridModel:
        if self.preset is None and None in (self.dim, self.layers, self.heads):
            raise ValueError("set preset, or all of dim, layers and heads")
        if self.name is None and self.preset is None:
            raise ValueError("a model given by its dimensions needs a name")
        return self

    @property
    def label(self) -> str:
        """The model's part of a child's name."""
        if self.name:
            return self.name
        return "".join(c for c in (self.preset or "").lower() if c.isalnum())[:12] or "model"


class GridSpec(_Spec):
    """The grid: one child run per (objective, model, unique tokens, epochs)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.objectives.size() * self.models.size() * "
                    f"self.uniqueTokens.size() * self.epochs.size() <= {MAX_GRID_POINTS}",
                    "message": f"the grid has more than {MAX_GRID_POINTS} points",
                },
            ]
        }
    )

    objectives: list[Objective] = Field(
        ...,
        min_length=1,
        max_length=2,
        description="Training objectives: ar (ARRun children), mdm (DiffusionRun children).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    models: list[GridModel] = Field(
        ...,
        min_length=1,
        max_length=32,
        description="Model sizes: presets or explicit shapes.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    uniqueTokens: list[Annotated[int, Field(ge=2, le=MAX_UNIQUE_TOKENS)]] = Field(
        ...,
        min_length=1,
        max_length=16,
        description="U values: each child trains on the first U tokens of the training set.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    epochs: list[Annotated[float, Field(gt=0, le=100000)]] = Field(
        ...,
        min_length=1,
        max_length=32,
        description="Epoch counts: passes over the U unique tokens.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _bounded(self) -> GridSpec:
        n = len(self.objectives) * len(self.models) * len(self.uniqueTokens) * len(self.epochs)
        if n > MAX_GRID_POINTS:
            raise ValueError(f"the grid has {n} points; at most {MAX_GRID_POINTS}")
        for axis in ("objectives", "uniqueTokens", "epochs"):
            values = getattr(self, axis)
            if len(set(values)) != len(values):
                raise ValueError(f"grid.{axis} has duplicates")
        keys = [(m.label, m.preset) for m in self.models]
        labels = [m.label for m in self.models]
        if len(set(keys)) != len(keys) or len(set(labels)) != len(labels):
            raise ValueError("grid models must have distinct names")
        return self

    @property
    def size(self) -> int:
        return len(self.objectives) * len(self.models) * len(self.uniqueTokens) * len(self.epochs)


class TemplateModel(_Spec):
    """What the grid's models share: sequence length and vocabulary."""

    seqLen: int = Field(2048, ge=2, le=131072, description="Sequence length L in tokens.")
    vocabSize: int = Field(
        50257,
        ge=2,
        le=1_000_000,
        description="Tokenizer vocabulary of the data (GPT-2: 50257).",
    )


class TemplateData(_Spec):
    """The dataset every child reads; its size and repetition come from the grid."""

    trainUri: str = Field(
        ...,
        max_length=1024,
        pattern=STORE_URI,
        description="Training token shards (s3://, file:///, or a relative path for local "
        "studies).",
    )
    valUri: str | None = Field(
        None,
        max_length=1024,
        pattern=STORE_URI,
        description="Validation token shards; required by evaluation and validation curves.",
    )


class RunTemplate(_Spec):
    """Everything a run has except the grid's axes (model shape, unique tokens, epochs).
    checkpoint.uri, when set, is a prefix: each child checkpoints under <uri>/<child name>."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})

    model: TemplateModel = Field(
        default_factory=TemplateModel, description="Sequence length and vocabulary."
    )
    data: TemplateData = Field(..., description="Training and validation data.")
    training: TrainingSpec = Field(
        default_factory=TrainingSpec, description="Batch, optimizer and numerics."
    )
    diffusion: DiffusionSpec = Field(
        default_factory=DiffusionSpec, description="Masked-diffusion settings (mdm children)."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="GPU nodes and pod placement."
    )
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec,
        description="Checkpoint store prefix (one directory per child), interval, retention.",
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
        3, ge=0, le=100, description="Trainer restarts before a child run fails."
    )


class PerRunSpec(_Spec):
    """Intervals that scale with each child's length (children differ in steps)."""

    validations: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Validate about this many times over each child's training (the interval "
        "is its steps / N); overrides template.validation.interval.",
    )
    checkpoints: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Checkpoint about this many times per child; overrides "
        "template.checkpoint.interval.",
    )


class FitParams(_Spec):
    """Constants of the law held fixed in the fit (unset: fitted)."""

    E: float | None = Field(None, gt=0, le=100, description="Irreducible loss E.")
    A: float | None = Field(None, gt=0, le=1e12, description="Parameter term's scale A.")
    B: float | None = Field(None, gt=0, le=1e12, description="Data term's scale B.")
    alpha: float | None = Field(None, gt=0, lt=5, description="Parameter exponent alpha.")
    beta: float | None = Field(None, gt=0, lt=5, description="Data exponent beta.")
    R_D_star: float | None = Field(
        None, gt=0, le=1e9, description="R_D*: how many repetitions of the data are worth."
    )
    R_N_star: float | None = Field(
        None, gt=0, le=1e9, description="R_N*: the same for parameters beyond compute-optimal."
    )

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class FixedParams(_Spec):
    """Fixed constants per objective."""

    ar: FitParams = Field(default_factory=FitParams, description="Held fixed in AR's fit.")
    mdm: FitParams = Field(default_factory=FitParams, description="Held fixed in MDM's fit.")


class FitSpec(_Spec):
    """The scaling-law fit that runs when every child has finished."""

    enabled: bool = Field(True, description="Fit the law once the children are done.")
    points: Literal["final", "validationCurve"] = Field(
        "final",
        description="Fit data: final (one point per child: its evaluated validation loss) or "
        "validationCurve (every validation along each child's training, best so far; local "
        "studies only, the operator keeps no curves).",
    )
    fixed: FixedParams = Field(
        default_factory=FixedParams, description="Constants held fixed, per objective."
    )
    bootstrap: int = Field(
        50, ge=0, le=1000, description="Bootstrap resamples for the standard errors (0: none)."
    )
    seed: int = Field(0, ge=0, le=2147483647, description="Seed of the bootstrap.")
    criticalComputeAt: list[Annotated[int, Field(ge=2, le=MAX_UNIQUE_TOKENS)]] = Field(
        default_factory=list,
        max_length=16,
        description="U values at which C_crit is reported; empty: the grid's uniqueTokens.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class ScalingStudySpec(_Spec):
    """A data-constrained scaling study: a grid of runs and the law fitted to them."""

    template: RunTemplate = Field(
        ...,
        description="The children's common spec.",
        json_schema_extra=_immutable("template"),
    )
    grid: GridSpec = Field(
        ..., description="The grid's axes.", json_schema_extra=_immutable("grid")
    )
    perRun: PerRunSpec = Field(
        default_factory=PerRunSpec,
        description="Intervals per child.",
        json_schema_extra=_immutable("perRun"),
    )
    maxConcurrent: int = Field(
        4, ge=1, le=1000, description="Children unfinished at a time (created, not yet done)."
    )
    fit: FitSpec = Field(default_factory=FitSpec, description="The scaling-law fit.")


# ---------------------------------------------------------------------------------------------
# Status


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StudyChild(_Status):
    """One grid point and its run."""

    name: str = Field(..., description="The child run's name.")
    kind: Literal["ARRun", "DiffusionRun"] = Field(..., description="ARRun or DiffusionRun.")
    objective: Objective = Field(..., description="ar or mdm.")
    model: str = Field(..., description="The grid model's name.")
    params: int = Field(..., ge=0, description="Model parameters (tied embeddings once).")
    uniqueTokens: int = Field(..., ge=0, description="U.")
    epochs: float = Field(..., ge=0, description="Epochs.")
    phase: str = Field(
        "NotCreated", description="The child's phase; NotCreated while it waits for a slot."
    )
    bestLoss: float | None = Field(
        None, description="Its best validation loss (evaluated, or the best of its curve)."
    )
    message: str | None = Field(None, description="Why it failed, when it did.")


class ChildCounts(_Status):
    """Children by state."""

    total: int = Field(0, ge=0, description="Grid points.")
    waiting: int = Field(0, ge=0, description="Not created yet (no free slot).")
    active: int = Field(0, ge=0, description="Created and not finished.")
    succeeded: int = Field(0, ge=0, description="Succeeded.")
    failed: int = Field(0, ge=0, description="Failed (reported, never retried by the operator).")


class ParamValues(_Status):
    """The law's seven constants."""

    E: float | None = Field(None, description="Irreducible loss E.")
    A: float | None = Field(None, description="A.")
    B: float | None = Field(None, description="B.")
    alpha: float | None = Field(None, description="alpha.")
    beta: float | None = Field(None, description="beta.")
    R_D_star: float | None = Field(None, description="R_D*.")
    R_N_star: float | None = Field(None, description="R_N*.")


class Identified(_Status):
    """Whether the data determine the repetition constants at all."""

    R_D_star: bool = Field(False, description="Some point repeats data (epochs > 1).")
    R_N_star: bool = Field(
        False, description="Some point has more parameters than compute-optimal for its data."
    )


class LawFitStatus(_Status):
    """One objective's fitted law."""

    values: ParamValues = Field(default_factory=ParamValues, description="Fitted constants.")
    stderr: ParamValues = Field(
        default_factory=ParamValues, description="Bootstrap standard errors (0 for fixed ones)."
    )
    identified: Identified = Field(
        default_factory=Identified, description="Identification of R_D* and R_N*."
    )
    fixed: list[str] = Field(default_factory=list, description="Constants held fixed.")
    points: int = Field(0, ge=0, description="Data points fitted.")
    rmseLogLoss: float | None = Field(None, description="RMSE of the fit in log loss.")


class CriticalCompute(_Status):
    """C_crit at one U."""

    uniqueTokens: float = Field(..., description="U.")
    flops: float | None = Field(
        None, description="FLOPs where MDM's best loss drops below AR's; absent: never."
    )


class CriticalComputeLaw(_Status):
    """C_crit(U) = coefficient * U^exponent (the paper: exponent 2.174)."""

    exponent: float = Field(..., description="Power of U.")
    coefficient: float = Field(..., description="Prefactor.")


class StudyFit(_Status):
    """The fitted data-constrained law."""

    ar: LawFitStatus | None = Field(None, description="AR's law.")
    mdm: LawFitStatus | None = Field(None, description="MDM's law.")
    criticalCompute: list[CriticalCompute] = Field(
        default_factory=list, description="C_crit for each U of fit.criticalComputeAt."
    )
    criticalComputeLaw: CriticalComputeLaw | None = Field(
        None, description="C_crit(U) as a power law over U = 1e7..1e11."
    )
    job: str | None = Field(None, description="The fit Job (cluster studies).")
    inputHash: str | None = Field(None, description="Hash of the points and options fitted.")


class StudyStatus(_Status):
    """Observed state of a study; written by the operator only."""

    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )

    phase: StudyPhase | None = Field(
        None, description="Pending, Running, Fitting, Succeeded or Failed."
    )
    reason: str | None = Field(None, description="CamelCase reason of the current phase.")
    message: str | None = Field(None, description="Human-readable details.")
    observedGeneration: int | None = Field(None, ge=0, description="Generation acted on.")
    summary: str = Field("", description="succeeded/total children, for printer columns.")
    counts: ChildCounts = Field(default_factory=ChildCounts, description="Children by state.")
    children: list[StudyChild] = Field(
        default_factory=list, description="Every grid point, in grid order."
    )
    failedChildren: list[str] = Field(
        default_factory=list, description="Names of the children that failed."
    )
    fit: StudyFit | None = Field(None, description="The fitted law, once fitted.")
    startTime: str | None = Field(None, description="When the first child was created.")
    completionTime: str | None = Field(None, description="When the study finished.")


# ---------------------------------------------------------------------------------------------
# The CRD


def _printer_columns() -> list[dict]:
    return [
        {
            "name": "Phase",
            "type": "string",
            "jsonPath": ".status.phase",
            "description": "Pending, Running, Fitting, Succeeded, Failed",
        },
        {
            "name": "Children",
            "type": "string",
            "jsonPath": ".status.summary",
            "description": "Children succeeded / total",
        },
        {
            "name": "Running",
            "type": "integer",
            "jsonPath": ".status.counts.active",
            "description": "Children created and not finished",
        },
        {
            "name": "AR-R_D*",
            "type": "number",
            "jsonPath": ".status.fit.ar.values.R_D_star",
            "description": "Fitted R_D* of AR",
        },
        {
            "name": "MDM-R_D*",
            "type": "number",
            "jsonPath": ".status.fit.mdm.values.R_D_star",
            "description": "Fitted R_D* of MDM",
        },
        {
            "name": "Message",
            "type": "string",
            "jsonPath": ".status.message",
            "description": "Details of the phase",
            "priority": 1,
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def study_crd() -> dict:
    """The ScalingStudy CRD, generated like the runs' (`crdgen.crds()` includes it)."""
    from diffar.operator.api import DNS1035, GROUP, VERSION
    from diffar.operator.crdgen import schema_of

    root = {
        "type": "object",
        "description": "A data-constrained scaling study: a grid of ARRuns and DiffusionRuns "
        "(objectives x models x unique tokens x epochs) run at most maxConcurrent at a time, "
        "and the scaling law of Muennighoff et al. fitted to their results (arXiv 2507.15857).",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"APIVersion: {GROUP}/{VERSION}."},
            "kind": {"type": "string", "description": f"Kind of this object: {KIND}."},
            "metadata": {"type": "object"},
            "spec": schema_of(ScalingStudySpec),
            "status": schema_of(StudyStatus, mode="serialization"),
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_STUDY_NAME}",
                "message": f"the study name must be at most {MAX_STUDY_NAME} characters",
            },
            {
                "rule": f"self.metadata.name.matches('{DNS1035}')",
                "message": "the study name must be a DNS-1035 label: lower-case letters, digits "
                "and '-', starting with a letter and ending with a letter or digit",
            },
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "diffar", "app.kubernetes.io/part-of": "diffar"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["diffar", "all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }
