"""Bad input: invalid manifests, each rejected with a clear message, none creating a PyTorchJob.

Every case is checked offline here (the CRD's own schema and CEL rules via
`diffar.operator.schemacheck`, then the operator's parse and validation), and live in
tests/cluster/test_bad_input_live.py (applied with kubectl to a real API server while the operator
runs: refused at admission naming the field, or Failed/InvalidSpec with an Event; no PyTorchJob).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from diffar.operator import schemacheck, status
from diffar.operator.runs import Run, Settings, SpecError, validate

from .conftest import MINIMAL_DIFFUSION


def _set(path: str, value: Any):
    def mutate(m: dict) -> None:
        *parents, leaf = path.split(".")
        node = m
        for p in parents:
            node = node.setdefault(p, {})
        if value is _DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value

    return mutate


_DELETE = object()


def _many(*mutations):
    def mutate(m: dict) -> None:
        for fn in mutations:
            fn(m)

    return mutate


def _ar(m: dict) -> None:
    m["kind"] = "ARRun"


# (id, mutation, layer, expected text): layer "schema" = the API server rejects it (schema or
# CEL); "operator" = admitted, then the operator fails it with InvalidSpec.
CASES = [
    ("name-uppercase", _set("metadata.name", "MDM-Run"), "schema", "DNS-1035"),
    ("name-leading-digit", _set("metadata.name", "1run"), "schema", "DNS-1035"),
    ("name-too-long", _set("metadata.name", "r" * 41), "schema", "at most 40"),
    ("no-model", _set("spec.model", _DELETE), "schema", "model"),
    ("no-train-uri", _set("spec.data.trainUri", _DELETE), "schema", "trainUri"),
    ("train-uri-http", _set("spec.data.trainUri", "http://x/y"), "schema", "trainUri"),
    ("no-unique-tokens", _set("spec.data.uniqueTokens", _DELETE), "schema", "uniqueTokens"),
    ("unique-tokens-1", _set("spec.data.uniqueTokens", 1), "schema", "uniqueTokens"),
    ("epochs-zero", _set("spec.data.epochs", 0), "schema", "epochs"),
    ("epochs-text", _set("spec.data.epochs", "fifty"), "schema", "epochs"),
    ("model-empty", _set("spec.model", {"seqLen": 128}), "schema", "set model.preset"),
    ("dim-too-small", _set("spec.model.dim", 4), "schema", "dim"),
    ("seq-len-1", _set("spec.model.seqLen", 1), "schema", "seqLen"),
    ("lr-zero", _set("spec.training.lr", 0), "schema", "lr"),
    ("min-lr-above-lr", _set("spec.training.minLr", 0.5), "schema", "minLr"),
    ("micro-above-global", _set("spec.training.microBatch", 64), "schema", "microBatch"),
    ("precision-fp16", _set("spec.training.precision", "fp16"), "schema", "precision"),
    ("zero-stage-4", _set("spec.training.zeroStage", 4), "schema", "zeroStage"),
    ("dropout-1", _set("spec.training.dropout", 1.0), "schema", "dropout"),
    ("nodes-zero", _set("spec.resources.nodes", 0), "schema", "nodes"),
    ("gpus-zero", _set("spec.resources.gpusPerNode", 0), "schema", "gpusPerNode"),
    ("cpu-words", _set("spec.resources.cpu", "lots"), "schema", "cpu"),
    (
        "gpu-resource-space",
        _set("spec.resources.gpuResource", "nvidia gpu"),
        "schema",
        "gpuResource",
    ),
    (
        "toleration-operator",
        _set("spec.resources.tolerations", [{"key": "gpu", "operator": "Maybe"}]),
        "schema",
        "operator",
    ),
    ("task-unknown", _set("spec.evaluation.tasks", ["mmlu"]), "schema", "tasks"),
    ("mc-samples-zero", _set("spec.evaluation.mcSamples", 0), "schema", "mcSamples"),
    ("eval-without-val", _set("spec.data.valUri", _DELETE), "schema", "valUri"),
    ("eval-without-ckpt", _set("spec.checkpoint", _DELETE), "schema", "checkpoint.uri"),
    (
        "kueue-and-volcano",
        _set("spec.scheduling", {"kueue": {"queueName": "q"}, "volcano": {"queue": "v"}}),
        "schema",
        "kueue",
    ),
    ("kueue-no-queue", _set("spec.scheduling", {"kueue": {}}), "schema", "queueName"),
    ("unknown-field", _set("spec.trainng", {"lr": 1e-3}), "schema", "trainng"),
    ("mask-eps-zero", _set("spec.diffusion.maskEps", 0), "schema", "maskEps"),
    (
        "diffusion-on-arrun",
        _many(_ar, _set("spec.diffusion", {"maskEps": 0.01})),
        "schema",
        "diffusion",
    ),
    ("s3-endpoint-no-scheme", _set("spec.s3.endpoint", "s3.local:8333"), "schema", "endpoint"),
    ("pull-policy", _set("spec.images.pullPolicy", "Sometimes"), "schema", "pullPolicy"),
    ("max-restarts-negative", _set("spec.maxRestarts", -1), "schema", "maxRestarts"),
    ("ckpt-interval-zero", _set("spec.checkpoint.interval", 0), "schema", "interval"),
    # What only the operator can check.
    ("preset-unknown", _set("spec.model.preset", "7B"), "operator", "'7B' is unknown"),
    (
        "batch-not-divisible",
        _set("spec.resources.gpusPerNode", 3),
        "operator",
        "not divisible by world size 6",
    ),
    (
        "batch-not-divisible-nodes",
        _set("spec.resources.nodes", 3),
        "operator",
        "not divisible by world size 12",
    ),
    (
        "micro-batch-not-multiple",
        _set("spec.training", {"globalBatch": 48, "microBatch": 4}),
        "operator",
        "not a multiple of micro_batch",
    ),
    ("too-few-tokens", _set("spec.data.uniqueTokens", 100), "operator", "too few for one sequence"),
    ("no-optimizer-step", _set("spec.data.epochs", 0.001), "operator", "no optimizer step"),
    (
        "dims-not-divisible",
        _set("spec.model", {"dim": 100, "layers": 2, "heads": 3}),
        "operator",
        "not divisible by n_heads",
    ),
    (
        "odd-head-dim",
        _set("spec.model", {"dim": 96, "layers": 2, "heads": 32}),
        "operator",
        "rotary",
    ),
]


def bad_manifest(name: str, mutate) -> dict:
    m = copy.deepcopy(MINIMAL_DIFFUSION)
    m["metadata"]["name"] = f"bad-{name}"[:40]
    mutate(m)
    return m


def test_there_are_enough_cases():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "mutate", "layer", "text"), CASES, ids=[c[0] for c in CASES])
def test_rejected_offline(name, mutate, layer, text, run_crds):
    m = bad_manifest(name, mutate)
    errors = schemacheck.admit(run_crds[m["kind"]], m)
    if layer == "schema":
        assert errors, "the CRD admitted it"
        assert text in " ".join(errors)
    else:
        assert errors == []
    # The operator rejects it too (so `diffar render` does, and a stale CRD is no hole).
    try:
        problems = validate(Run.from_body(m))
    except SpecError as e:
        problems = e.problems
    assert problems, "the operator accepted it"
    if layer == "operator":
        assert text in "; ".join(problems)
    # And the state machine creates nothing for it.
    body = copy.deepcopy(m)
    body["metadata"]["uid"] = "u"
    d = status.decide(body, status.Observed(), Settings(), status.datetime.now(status.UTC))
    assert d.create == [] and d.phase == "Failed" and d.status["reason"] == "InvalidSpec"
