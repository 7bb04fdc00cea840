"""The bad-input corpus: hostile and broken run manifests, as plain data.

Each case is a mutation of `BASE` (a valid DiffusionRun) and the verdict every layer must give.
Nothing here imports diffar: the offline tests (tests/operator/test_bad_input.py: the generated
CRD through `diffar.operator.schemacheck`, and the pydantic models with the operator's
validation, which `diffar render` runs) and a real API server (`kubectl apply` of `manifest(case)`)
read the same list.

A case is a dict:

- `name`: unique id; `cls`: the class of bad input (see `CLASSES`);
- `changes`: a list of `["set", [path...], value]` or `["del", [path...]]` applied to BASE (paths
  are lists, since label keys contain dots);
- `old`: for updates only, the changes that make the stored object; the case is then an update
  from `manifest(case, old=True)` to `manifest(case)`;
- `layer`: `"schema"`: the API server refuses it (schema or CEL) and so does render;
  `"operator"`: the API server admits it (only the operator can check it) and render and the
  operator refuse it; `"accept"`: a valid edge case every layer admits;
- `field`: the field the error names (a dotted path; list indices left out).

Unknown fields (`toleration-typo`, `affinity-typo`, `schema-unknown-field`,
`schema-diffusion-on-arrun`) are refused by `kubectl create/apply`, whose server-side field
validation is Strict (400 "strict decoding error: unknown field"); a client that sends no
`fieldValidation` gets them pruned with a warning instead. Every other case was checked against
a real kube-apiserver v1.37.2 with these CRDs: each "schema" case answered 422 naming `field`,
each other case was admitted.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from testsupport.manifests import MINIMAL_DIFFUSION

# A valid DiffusionRun that every case mutates (shared with the conftests).
BASE: dict[str, Any] = MINIMAL_DIFFUSION

CLASSES = {
    "text": "newlines, NUL bytes, shell text or spaces in strings that reach env vars, labels, "
    "config files or image references",
    "secret-key": "Secret key names and Secret names",
    "node-selector": "node selector keys and values",
    "toleration": "tolerations",
    "pull-secret": "image pull Secrets",
    "gpu-resource": "GPU resource names (standard resources, no domain)",
    "quantity": "negative or malformed quantities",
    "url": "URLs: schemes, userinfo, query strings, fragments, link-local and metadata hosts",
    "bound": "counts beyond their bounds (planned steps and tokens must fit int64)",
    "strict": "string and boolean coercion (render must not accept what the CRD refuses)",
    "affinity": "affinity: typos, bad operators and weights, size",
    "duplicate": "duplicate list entries",
    "task": "evaluation tasks the evaluator does not ship",
    "cluster-uri": "file:// and relative store URIs on a cluster",
    "immutable": "immutable fields changed, removed or re-added",
    "schema": "missing, unknown or out-of-range fields",
    "semantic": "what only the operator can check (presets, divisibility, token counts)",
    "valid": "valid edge cases that every layer must admit",
}

S = ["spec"]
R = [*S, "resources"]
IMG = [*S, "images"]
EV = [*S, "evaluation"]
S3 = [*S, "s3"]
DATA = [*S, "data"]


def _set(path: list[str], value: Any) -> list:
    return ["set", path, value]


def _del(path: list[str]) -> list:
    return ["del", path]


def _case(name, cls, changes, layer, field, old=None) -> dict[str, Any]:
    case = {"name": name, "cls": cls, "changes": changes, "layer": layer, "field": field}
    if old is not None:
        case["old"] = old
    return case


def _tol(**kw) -> list:
    return [_set([*R, "tolerations"], [{"key": "nvidia.com/gpu", "operator": "Exists", **kw}])]


def _aff(affinity: dict) -> list:
    return [_set([*R, "affinity"], affinity)]


def _req(*exprs: dict) -> dict:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": list(exprs)}]
            }
        }
    }


_GOOD_EXPR = {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["H100"]}
_PG = [*EV, "pushgatewayUrl"]
_EP = [*S3, "endpoint"]
_DIGEST = "sha256:" + "a" * 64

CASES: list[dict[str, Any]] = [
    # --- text: strings that reach env vars, labels, config files, image references
    _case("name-uppercase", "text", [_set(["metadata", "name"], "MDM-Run")], "schema", "name"),
    _case("name-leading-digit", "text", [_set(["metadata", "name"], "1run")], "schema", "name"),
    _case("name-too-long", "text", [_set(["metadata", "name"], "r" * 41)], "schema", "name"),
    _case("name-newline", "text", [_set(["metadata", "name"], "run\nx")], "schema", "name"),
    *[
        _case(f"train-uri-{tag}", "text", [_set([*DATA, "trainUri"], uri)], "schema", "trainUri")
        for tag, uri in (
            ("newline", "s3://data/train\nX=1"),
            ("nul", "s3://data/tr\x00ain"),
            ("shell", "s3://data/$(reboot)"),
            ("backtick", "s3://data/`id`"),
            ("space", "s3://data/my train"),
            ("query", "s3://data/train?versionId=1"),
        )
    ],
    _case("val-uri-newline", "text", [_set([*DATA, "valUri"], "s3://d/v\n")], "schema", "valUri"),
    _case(
        "ckpt-uri-semicolon",
        "text",
        [_set([*S, "checkpoint", "uri"], "s3://runs/x;rm -rf /")],
        "schema",
        "checkpoint.uri",
    ),
    _case("region-newline", "text", [_set([*S3, "region"], "us-east-1\nX=1")], "schema", "region"),
    _case("region-shell", "text", [_set([*S3, "region"], "$(id)")], "schema", "region"),
    *[
        _case(f"image-{tag}", "text", [_set([*IMG, "trainer"], ref)], "schema", "trainer")
        for tag, ref in (
            ("newline", "ghcr.io/diffar/trainer:1\nfoo"),
            ("shell", "ghcr.io/diffar/trainer:$(id)"),
            ("uppercase", "GHCR.io/Diffar/trainer:1"),
            ("space", "ghcr.io/diffar/trainer 1"),
            ("bad-digest", "ghcr.io/diffar/trainer@sha256:abc"),
            ("nul", "ghcr.io/diffar/tr\x00ainer:1"),
        )
    ],
    _case(
        "evaluator-image-option",
        "text",
        [_set([*IMG, "evaluator"], "--privileged")],
        "schema",
        "evaluator",
    ),
    _case("preset-newline", "text", [_set([*S, "model", "preset"], "tiny\n")], "schema", "preset"),
    _case(
        "kueue-queue-newline",
        "text",
        [_set([*S, "scheduling"], {"kueue": {"queueName": "q\nx"}})],
        "schema",
        "queueName",
    ),
    _case(
        "volcano-queue-uppercase",
        "text",
        [_set([*S, "scheduling"], {"volcano": {"queue": "Gpu"}})],
        "schema",
        "queue",
    ),
    _case(
        "priority-class-shell",
        "text",
        [_set([*R, "priorityClassName"], "high;reboot")],
        "schema",
        "priorityClassName",
    ),
    # --- Secret names and keys
    _case(
        "secret-name-uppercase",
        "secret-key",
        [_set([*S3, "credentialsSecret"], "S3-Keys")],
        "schema",
        "credentialsSecret",
    ),
    *[
        _case(f"secret-key-{tag}", "secret-key", [_set([*S3, field], key)], "schema", field)
        for tag, field, key in (
            ("space", "accessKeyIdKey", "AWS KEY"),
            ("slash", "secretAccessKeyKey", "../etc/passwd"),
            ("newline", "accessKeyIdKey", "AWS_ACCESS_KEY_ID\n"),
            ("empty", "secretAccessKeyKey", ""),
            ("shell", "secretAccessKeyKey", "$(cat /etc/shadow)"),
        )
    ],
    # --- node selectors
    *[
        _case(
            f"node-selector-{tag}",
            "node-selector",
            [_set([*R, "nodeSelector"], selector)],
            "schema",
            "nodeSelector",
        )
        for tag, selector in (
            ("key-space", {"gpu type": "h100"}),
            ("key-newline", {"gpu\n": "h100"}),
            ("value-newline", {"gpu": "h100\nx"}),
            ("value-too-long", {"gpu": "h" * 64}),
            ("value-not-string", {"gpu": 1}),
            ("too-many", {f"k{i}": "v" for i in range(65)}),
            ("key-prefix-uppercase", {"Example.com/gpu": "h100"}),
            ("value-shell", {"gpu": "$(id)"}),
        )
    ],
    # --- tolerations
    _case("toleration-key-shell", "toleration", _tol(key="$(id)"), "schema", "key"),
    _case(
        "toleration-value-newline",
        "toleration",
        _tol(operator="Equal", value="a\nb"),
        "schema",
        "value",
    ),
    _case("toleration-exists-value", "toleration", _tol(value="x"), "schema", "tolerations"),
    _case(
        "toleration-seconds-no-noexecute",
        "toleration",
        _tol(effect="NoSchedule", tolerationSeconds=60),
        "schema",
        "tolerations",
    ),
    _case(
        "toleration-seconds-negative",
        "toleration",
        _tol(effect="NoExecute", tolerationSeconds=-1),
        "schema",
        "tolerationSeconds",
    ),
    _case("toleration-effect", "toleration", _tol(effect="Sometimes"), "schema", "effect"),
    _case("toleration-operator", "toleration", _tol(operator="Maybe"), "schema", "operator"),
    _case("toleration-typo", "toleration", _tol(efect="NoSchedule"), "schema", "efect"),
    _case(
        "toleration-too-many",
        "toleration",
        [_set([*R, "tolerations"], [{"key": f"k{i}", "operator": "Exists"} for i in range(65)])],
        "schema",
        "tolerations",
    ),
    # --- image pull Secrets
    *[
        _case(
            f"pull-secret-{tag}",
            "pull-secret",
            [_set([*IMG, "pullSecrets"], value)],
            "schema",
            "pullSecrets",
        )
        for tag, value in (
            ("uppercase", ["Regcred"]),
            ("newline", ["regcred\n"]),
            ("not-string", [7]),
            ("too-many", [f"s{i}" for i in range(17)]),
        )
    ],
    # --- GPU resource names
    *[
        _case(
            f"gpu-resource-{tag}",
            "gpu-resource",
            [_set([*R, "gpuResource"], value)],
            "schema",
            "gpuResource",
        )
        for tag, value in (
            ("memory", "memory"),
            ("cpu", "cpu"),
            ("hugepages", "hugepages-2Mi"),
            ("kubernetes-io", "kubernetes.io/gpu"),
            ("sub-kubernetes-io", "node.kubernetes.io/gpu"),
            ("newline", "nvidia.com/gpu\n"),
            ("space", "nvidia gpu"),
        )
    ],
    # --- quantities
    *[
        _case(f"quantity-{tag}", "quantity", [_set([*R, field], value)], "schema", field)
        for tag, field, value in (
            ("cpu-negative", "cpu", "-1"),
            ("memory-negative", "memory", "-128Gi"),
            ("shm-negative-int", "sharedMemory", -1),
            ("cache-negative", "cacheSize", "-1Gi"),
            ("memory-bad-suffix", "memory", "1GB"),
            ("cpu-words", "cpu", "lots"),
            ("cpu-huge-int", "cpu", 2**60),
            ("cache-newline", "cacheSize", "10Gi\n"),
        )
    ],
    # --- URLs
    *[
        _case(f"pushgateway-{tag}", "url", [_set(_PG, url)], "schema", "pushgatewayUrl")
        for tag, url in (
            ("query", "http://pg.monitoring.svc:9091/?x=1"),
            ("fragment", "http://pg.monitoring.svc:9091/#/admin"),
            ("userinfo", "http://user@evil.example:9091"),
            ("link-local", "http://169.254.169.254/latest/meta-data"),
            ("metadata-name", "http://metadata.google.internal/computeMetadata/v1"),
            ("decimal-ip", "http://2852039166/"),
            ("octal-ip", "http://0251.0376.0251.0376/"),
            ("file-scheme", "file:///etc/passwd"),
            ("gopher", "gopher://pg:70/"),
            ("ipv6-literal", "http://[fe80::1]/"),
            ("newline", "http://pg:9091/\r\nX-Injected: 1"),
            ("backslash", "http://pg:9091\\@evil.example/"),
        )
    ],
    _case(
        "s3-endpoint-link-local", "url", [_set(_EP, "http://169.254.170.2/")], "schema", "endpoint"
    ),
    _case(
        "s3-endpoint-query", "url", [_set(_EP, "http://s3.local:8333/?a=b")], "schema", "endpoint"
    ),
    _case("s3-endpoint-no-scheme", "url", [_set(_EP, "s3.local:8333")], "schema", "endpoint"),
    _case(
        "s3-endpoint-shell",
        "url",
        [_set(_EP, "http://s3.local/$(DIFFAR_RUN)")],
        "schema",
        "endpoint",
    ),
    # --- bounds
    *[
        _case(f"bound-{tag}", "bound", [_set(path, value)], "schema", path[-1])
        for tag, path, value in (
            ("unique-tokens", [*DATA, "uniqueTokens"], 10**13 + 1),
            ("unique-tokens-int64", [*DATA, "uniqueTokens"], 2**63),
            ("epochs", [*DATA, "epochs"], 1e6),
            ("max-steps", [*S, "training", "maxSteps"], 10**13),
            ("ckpt-interval", [*S, "checkpoint", "interval"], 10**10),
            ("val-interval", [*S, "validation", "interval"], 10**10),
            ("val-max-tokens", [*S, "validation", "maxTokens"], 10**13),
            ("eval-limit", [*EV, "limit"], 10**8),
            ("nodes", [*R, "nodes"], 513),
            ("max-restarts-negative", [*S, "maxRestarts"], -1),
        )
    ],
    _case(
        "bound-toleration-seconds",
        "bound",
        _tol(effect="NoExecute", tolerationSeconds=2**63),
        "schema",
        "tolerationSeconds",
    ),
    # --- strict types
    *[
        _case(f"strict-{tag}", "strict", [_set(path, value)], "schema", path[-1])
        for tag, path, value in (
            ("nodes-string", [*R, "nodes"], "2"),
            ("epochs-string", [*DATA, "epochs"], "4"),
            ("suspend-string", [*S, "suspend"], "true"),
            ("enabled-string", [*EV, "enabled"], "false"),
            ("seed-bool", [*S, "training", "seed"], True),
            ("lr-string", [*S, "training", "lr"], "2e-4"),
            ("cpu-bool", [*R, "cpu"], True),
            ("gpus-float", [*R, "gpusPerNode"], 4.5),
            ("unique-tokens-string", [*DATA, "uniqueTokens"], "1000000"),
            ("tasks-string", [*EV, "tasks"], "copa"),
        )
    ],
    # --- affinity
    *[
        _case(f"affinity-{tag}", "affinity", _aff(aff), "schema", field)
        for tag, aff, field in (
            ("typo", {"nodeAfinity": {}}, "nodeAfinity"),
            (
                "no-terms",
                {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}
                    }
                },
                "nodeSelectorTerms",
            ),
            ("operator", _req({"key": "gpu", "operator": "Like", "values": ["h"]}), "operator"),
            (
                "weight-zero",
                {
                    "nodeAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {"weight": 0, "preference": {"matchExpressions": [_GOOD_EXPR]}}
                        ]
                    }
                },
                "weight",
            ),
            (
                "weight-101",
                {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {"weight": 101, "podAffinityTerm": {"topologyKey": "zone"}}
                        ]
                    }
                },
                "weight",
            ),
            ("too-many", _req(*[_GOOD_EXPR] * 17), "matchExpressions"),
            (
                "no-topology-key",
                {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{}]}},
                "topologyKey",
            ),
            (
                "huge-values",
                _req({"key": "gpu", "operator": "In", "values": [f"v{i}" for i in range(1000)]}),
                "values",
            ),
            ("key-newline", _req({"key": "gpu\n", "operator": "Exists"}), "key"),
            ("not-object", "anywhere", "affinity"),
        )
    ],
    # --- duplicates and tasks
    _case(
        "tasks-duplicate", "duplicate", [_set([*EV, "tasks"], ["copa", "copa"])], "schema", "tasks"
    ),
    _case(
        "pull-secrets-duplicate",
        "duplicate",
        [_set([*IMG, "pullSecrets"], ["regcred", "regcred"])],
        "schema",
        "pullSecrets",
    ),
    _case("task-race", "task", [_set([*EV, "tasks"], ["race"])], "schema", "tasks"),
    _case("task-unknown", "task", [_set([*EV, "tasks"], ["mmlu"])], "schema", "tasks"),
    _case("task-path", "task", [_set([*EV, "tasks"], ["/etc/passwd"])], "schema", "tasks"),
    # --- file:// and relative URIs on a cluster
    _case(
        "cluster-train-file",
        "cluster-uri",
        [_set([*DATA, "trainUri"], "file:///data/train")],
        "schema",
        "trainUri",
    ),
    _case(
        "cluster-val-file",
        "cluster-uri",
        [_set([*DATA, "valUri"], "file:///data/val")],
        "schema",
        "valUri",
    ),
    _case(
        "cluster-ckpt-file",
        "cluster-uri",
        [_set([*S, "checkpoint", "uri"], "file:///ckpt")],
        "schema",
        "uri",
    ),
    _case(
        "cluster-train-relative",
        "cluster-uri",
        [_set([*DATA, "trainUri"], "data/train")],
        "schema",
        "trainUri",
    ),
    # --- immutable fields (updates)
    _case(
        "update-ckpt-removed",
        "immutable",
        [_del([*S, "checkpoint", "uri"]), _set([*EV, "enabled"], False)],
        "schema",
        "checkpoint",
        old=[_set([*EV, "enabled"], False)],
    ),
    _case(
        "update-ckpt-readded",
        "immutable",
        [_set([*EV, "enabled"], False), _set([*S, "checkpoint", "uri"], "s3://elsewhere/ckpt")],
        "schema",
        "checkpoint",
        old=[_set([*EV, "enabled"], False), _del([*S, "checkpoint", "uri"])],
    ),
    _case(
        "update-ckpt-changed",
        "immutable",
        [_set([*S, "checkpoint", "uri"], "s3://elsewhere/ckpt")],
        "schema",
        "checkpoint",
        old=[],
    ),
    _case("update-epochs", "immutable", [_set([*DATA, "epochs"], 8)], "schema", "data", old=[]),
    _case(
        "update-preset",
        "immutable",
        [_set([*S, "model", "preset"], "small")],
        "schema",
        "model",
        old=[],
    ),
    _case(
        "update-lr",
        "immutable",
        [_set([*S, "training", "lr"], 1e-3)],
        "schema",
        "training",
        old=[],
    ),
    _case(
        "update-mask-eps",
        "immutable",
        [_set([*S, "diffusion"], {"maskEps": 0.01})],
        "schema",
        "diffusion",
        old=[],
    ),
    # --- missing, unknown and out-of-range fields
    *[
        _case(f"schema-{tag}", "schema", changes, "schema", field)
        for tag, changes, field in (
            ("no-model", [_del([*S, "model"])], "model"),
            ("no-train-uri", [_del([*DATA, "trainUri"])], "trainUri"),
            ("unique-tokens-1", [_set([*DATA, "uniqueTokens"], 1)], "uniqueTokens"),
            ("epochs-zero", [_set([*DATA, "epochs"], 0)], "epochs"),
            ("model-empty", [_set([*S, "model"], {"seqLen": 128})], "model"),
            ("dim-too-small", [_set([*S, "model", "dim"], 4)], "dim"),
            ("lr-zero", [_set([*S, "training", "lr"], 0)], "lr"),
            ("min-lr-above-lr", [_set([*S, "training", "minLr"], 0.5)], "minLr"),
            ("micro-above-global", [_set([*S, "training", "microBatch"], 64)], "microBatch"),
            ("precision-fp16", [_set([*S, "training", "precision"], "fp16")], "precision"),
            ("zero-stage-4", [_set([*S, "training", "zeroStage"], 4)], "zeroStage"),
            ("dropout-1", [_set([*S, "training", "dropout"], 1.0)], "dropout"),
            ("nodes-zero", [_set([*R, "nodes"], 0)], "nodes"),
            ("mc-samples-zero", [_set([*EV, "mcSamples"], 0)], "mcSamples"),
            ("eval-without-val", [_del([*DATA, "valUri"])], "valUri"),
            ("eval-without-ckpt", [_del([*S, "checkpoint"])], "checkpoint.uri"),
            (
                "kueue-and-volcano",
                [
                    _set(
                        [*S, "scheduling"], {"kueue": {"queueName": "q"}, "volcano": {"queue": "v"}}
                    )
                ],
                "kueue",
            ),
            ("kueue-no-queue", [_set([*S, "scheduling"], {"kueue": {}})], "queueName"),
            ("unknown-field", [_set([*S, "trainng"], {"lr": 1e-3})], "trainng"),
            ("mask-eps-zero", [_set([*S, "diffusion", "maskEps"], 0)], "maskEps"),
            (
                "diffusion-on-arrun",
                [_set(["kind"], "ARRun"), _set([*S, "diffusion"], {"maskEps": 0.01})],
                "diffusion",
            ),
            ("pull-policy", [_set([*IMG, "pullPolicy"], "Sometimes")], "pullPolicy"),
            ("ckpt-interval-zero", [_set([*S, "checkpoint", "interval"], 0)], "interval"),
        )
    ],
    # --- what only the operator can check
    *[
        _case(f"semantic-{tag}", "semantic", changes, "operator", text)
        for tag, changes, text in (
            ("preset-unknown", [_set([*S, "model", "preset"], "7B")], "'7B' is unknown"),
            ("batch-not-divisible", [_set([*R, "gpusPerNode"], 3)], "world size 6"),
            ("batch-not-divisible-nodes", [_set([*R, "nodes"], 3)], "world size 12"),
            (
                "micro-batch-not-multiple",
                [_set([*S, "training"], {"globalBatch": 48, "microBatch": 4})],
                "not a multiple of micro_batch",
            ),
            ("too-few-tokens", [_set([*DATA, "uniqueTokens"], 100)], "too few for one sequence"),
            ("no-optimizer-step", [_set([*DATA, "epochs"], 0.001)], "no optimizer step"),
            (
                "dims-not-divisible",
                [_set([*S, "model"], {"dim": 100, "layers": 2, "heads": 3})],
                "not divisible by n_heads",
            ),
            (
                "odd-head-dim",
                [_set([*S, "model"], {"dim": 96, "layers": 2, "heads": 32})],
                "rotary",
            ),
        )
    ],
    # --- valid edge cases: no layer may refuse them
    *[
        _case(f"valid-{tag}", "valid", changes, "accept", "")
        for tag, changes in (
            ("image-digest", [_set([*IMG, "trainer"], f"ghcr.io/diffar/diffar-trainer@{_DIGEST}")]),
            (
                "image-tag-and-digest",
                [_set([*IMG, "evaluator"], f"registry.local:5000/e/eval:0.1.0@{_DIGEST}")],
            ),
            ("node-selector", [_set([*R, "nodeSelector"], {"nvidia.com/gpu.product": "H100"})]),
            ("toleration", _tol(effect="NoSchedule")),
            ("toleration-seconds", _tol(effect="NoExecute", tolerationSeconds=300)),
            ("affinity", _aff(_req(_GOOD_EXPR))),
            (
                "anti-affinity",
                _aff(
                    {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 50,
                                    "podAffinityTerm": {
                                        "topologyKey": "kubernetes.io/hostname",
                                        "labelSelector": {"matchLabels": {"diffar.io/run": "x"}},
                                    },
                                }
                            ]
                        }
                    }
                ),
            ),
            ("pushgateway", [_set(_PG, "http://prometheus-pushgateway.monitoring.svc:9091")]),
            ("pushgateway-ip-path", [_set(_PG, "https://10.0.0.7:9091/pg")]),
            ("quantity-int", [_set([*R, "cpu"], 16), _set([*R, "cacheSize"], "100Gi")]),
            ("pull-secrets", [_set([*IMG, "pullSecrets"], ["regcred", "mirror-cred"])]),
            ("tasks", [_set([*EV, "tasks"], ["copa", "lambada"])]),
            ("update-suspend", [_set([*S, "suspend"], True)]),
        )
    ],
]
# A mutable field changed by an update is admitted too.
CASES[-1]["old"] = []


def _apply(doc: dict, changes: list) -> None:
    for op, path, *value in changes:
        node = doc
        for key in path[:-1]:
            node = node.setdefault(key, {})
        if op == "del":
            node.pop(path[-1], None)
        else:
            node[path[-1]] = copy.deepcopy(value[0])


def manifest(case: dict, *, old: bool = False) -> dict:
    """The case's manifest (or, with `old`, the stored object an update case starts from)."""
    doc = copy.deepcopy(BASE)
    doc["metadata"]["name"] = f"bad-{case['name']}"[:40].rstrip("-")
    _apply(doc, case["old"] if old else case["changes"])
    return doc


def as_json() -> str:
    """The corpus with its manifests, for tools outside Python (kubectl against a real server)."""
    return json.dumps(
        [
            {
                **c,
                "manifest": manifest(c),
                **({"oldManifest": manifest(c, old=True)} if "old" in c else {}),
            }
            for c in CASES
        ],
        indent=1,
    )
