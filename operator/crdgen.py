"""CustomResourceDefinitions generated from the pydantic models in `diffar.operator.api`.

`crds()` returns the CRD objects; `write(dirs)` writes one YAML file per CRD into each directory
(`crds/` and `charts/diffar/crds/`, by `make manifests`); `render_yaml()` is what `diffar crds`
prints. A test compares both directories with this output, so they cannot drift from the models.

The pydantic JSON schema is turned into a Kubernetes structural schema: `$ref`s inlined,
`Optional` unwrapped (absent is the Kubernetes way to say null), `int | str` turned into
`x-kubernetes-int-or-string`, JSON-Schema-2020 exclusive bounds turned into OpenAPI v3.0's boolean
form, `additionalProperties: false` dropped (the API server prunes unknown fields), defaults kept
for scalars, lists and maps, and for nested objects their properties' defaults filled in (the
API server evaluates a default against the node's CEL rules as written). Every
property must carry a description: generation fails otherwise.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault

from diffar.operator.api import (
    API_VERSION,
    DNS1035,
    GROUP,
    KINDS,
    MAX_RUN_NAME,
    VERSION,
    Kind,
    RunStatus,
)

_DROP = {"title", "additionalProperties", "$defs"}


class SchemaError(ValueError):
    """The models cannot be expressed as a structural schema (a bug in api.py)."""


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` wins, except that CEL rules of both are kept."""
    rules = base.get("x-kubernetes-validations", []) + over.get("x-kubernetes-validations", [])
    merged = {**base, **over}
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = copy.deepcopy(node)
    if "$ref" in node:
        ref = node.pop("$ref").rsplit("/", 1)[-1]
        node = _merge(copy.deepcopy(defs[ref]), node)
    if "allOf" in node and len(node["allOf"]) == 1:
        node = _merge(node.pop("allOf")[0], node)
        return _convert(node, defs, path)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        types = sorted(o.get("type", "") for o in options)
        if len(options) == 1:
            inner = _convert(options[0], defs, path)
            node = _merge(inner, {k: v for k, v in node.items() if k != "default" or v is not None})
        elif types == ["integer", "string"]:
            string = next(o for o in options if o.get("type") == "string")
            integer = next(o for o in options if o.get("type") == "integer")
            node.pop("type", None)
            node["x-kubernetes-int-or-string"] = True
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            # JSON Schema applies each keyword to its own type only: the pattern and length to
            # strings, the bounds to integers.
            for key in ("pattern", "maxLength"):
                if key in string:
                    node[key] = string[key]
            for key in ("minimum", "maximum"):
                if key in integer:
                    node[key] = integer[key]
        else:
            raise SchemaError(f"{path}: unions other than Optional and int|str: {options}")
    if node.get("default", 1) is None or node.get("default", 1) is NoDefault:
        node.pop("default")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node[bound]
            node[bound] = True
    if "patternProperties" in node:
        # A map with constrained keys: structural schemas have no patternProperties or
        # propertyNames, so the values' schema becomes additionalProperties and the keys' pattern
        # a CEL rule.
        ((key_pattern, value_schema),) = node.pop("patternProperties").items()
        max_key = (node.pop("propertyNames", None) or {}).get("maxLength", 253)
        node["additionalProperties"] = value_schema
        cel_pattern = key_pattern.replace("\\", "\\\\")  # a CEL string literal's escapes
        rule = {
            "rule": f"self.all(k, k.size() <= {max_key} && k.matches('{cel_pattern}'))",
            "message": f"keys must match {key_pattern} (at most {max_key} characters)",
        }
        node = _merge(node, {"x-kubernetes-validations": [rule]})
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if node.get("x-kubernetes-preserve-unknown-fields") and "type" not in node:
        node["type"] = "object"
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]")
        else:
            out[key] = value
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _convert(node["additionalProperties"], defs, f"{path}{{}}")
    if out.get("type") == "object" and "properties" in out:
        # A defaulted nested object's default is filled in with its properties' defaults: the
        # API server checks a default against the node's CEL rules as it stands (a bare {} fails
        # `self.minLr <= self.lr`: "no such key"), and the result is what defaulting {} gives.
        if "default" in out:
            out["default"] = _filled_default(out, out["default"])
        for name, sub in out["properties"].items():
            if not sub.get("description"):
                raise SchemaError(f"{path}.{name} has no description")
    return out


def _filled_default(node: dict[str, Any], value: Any) -> Any:
    """`value` with the defaults of `node`'s properties applied, recursively (structural
    defaulting, as the API server does it)."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for name, sub in (node.get("properties") or {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = _filled_default(sub, out[name])
    return out


class _WithFactoryDefaults(GenerateJsonSchema):
    """Defaults from default_factory too: nested objects ({}), lists and maps."""

    def get_default_value(self, schema):  # type: ignore[override]
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()
            return {} if isinstance(value, BaseModel) else value
        return super().get_default_value(schema)


def schema_of(model: type, *, mode: str = "validation") -> dict[str, Any]:
    raw = model.model_json_schema(mode=mode, schema_generator=_WithFactoryDefaults)  # type: ignore[attr-defined]
    return _convert(raw, raw.get("$defs", {}), model.__name__)


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {
            "name": "Phase",
            "type": "string",
            "jsonPath": ".status.phase",
            "description": "Pending, Queued, Training, Evaluating, Succeeded, Failed, Suspended",
        },
        {
            "name": "Objective",
            "type": "string",
            "jsonPath": ".status.objective",
            "description": "ar or mdm",
        },
        {
            "name": "Model",
            "type": "string",
            "jsonPath": ".spec.model.preset",
            "description": "Model preset",
        },
        {
            "name": "Epochs",
            "type": "number",
            "jsonPath": ".spec.data.epochs",
            "description": "Passes over the unique tokens",
        },
        {
            "name": "Progress",
            "type": "string",
            "jsonPath": ".status.progress.summary",
            "description": "Training step / total steps (percent)",
        },
        {
            "name": "Loss",
            "type": "number",
            "jsonPath": ".status.progress.loss",
            "description": "Last training loss",
        },
        {
            "name": "ValLoss",
            "type": "number",
            "jsonPath": ".status.results.valLoss",
            "description": "Validation loss after evaluation",
            "priority": 1,
        },
        {
            "name": "ETA",
            "type": "date",
            "jsonPath": ".status.progress.eta",
            "description": "Estimated end of training",
            "priority": 1,
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd_for(kind: Kind) -> dict[str, Any]:
    spec_schema = schema_of(kind.spec_model)
    status_schema = schema_of(RunStatus, mode="serialization")
    root = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": f"APIVersion of this object: {API_VERSION}.",
            },
            "kind": {"type": "string", "description": f"Kind of this object: {kind.kind}."},
            # Only name/generateName restrictions are allowed on metadata (the CEL rules below);
            # kubectl explain shows ObjectMeta's own documentation.
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_RUN_NAME}",
                "message": f"the run name must be at most {MAX_RUN_NAME} characters: the "
                "trainer's pods and Services are named <run>-train-worker-<n>",
            },
            {
                "rule": f"self.metadata.name.matches('{DNS1035}')",
                "message": "the run name must be a DNS-1035 label: lower-case letters, digits "
                "and '-', starting with a letter and ending with a letter or digit",
            },
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "diffar", "app.kubernetes.io/part-of": "diffar"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
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


def crds() -> list[dict[str, Any]]:
    from diffar.operator.study_api import study_crd

    return [crd_for(KINDS[name]) for name in sorted(KINDS)] + [study_crd()]


HEADER = "# Generated from operator/api.py by `make manifests` (`diffar crds`); do not edit.\n"


def _dump(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj, sort_keys=False, width=100, allow_unicode=True)


def file_name(crd: dict[str, Any]) -> str:
    return f"{crd['metadata']['name']}.yaml"


def files() -> dict[str, str]:
    """One file per CRD, in name order; each a complete YAML document stream."""
    return {file_name(crd): f"{HEADER}---\n{_dump(crd)}" for crd in sorted(crds(), key=file_name)}


def render_yaml() -> str:
    """What `diffar crds` prints: byte for byte `cat crds/*.yaml`."""
    return "".join(files().values())


def write(dirs: list[Path]) -> list[Path]:
    written = []
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files().items():
            path = d / name
            path.write_text(text)
            written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# docs/crd-reference.md, from the same schemas


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    t = node.get("type", "")
    if t == "array":
        return f"[]{_type_of(node.get('items') or {})}"
    if t == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_of(node['additionalProperties'])}"
    return t


def _constraints(node: dict[str, Any]) -> str:
    out = []
    if "enum" in node:
        out.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "items" in node and "enum" in node["items"]:
        out.append("each one of " + ", ".join(f"`{v}`" for v in node["items"]["enum"]))
    lo, hi = node.get("minimum"), node.get("maximum")
    if lo is not None:
        out.append(f"{'>' if node.get('exclusiveMinimum') else '>='} {lo}")
    if hi is not None:
        out.append(f"{'<' if node.get('exclusiveMaximum') else '<='} {hi}")
    if "maxLength" in node:
        out.append(f"at most {node['maxLength']} characters")
    if "maxItems" in node:
        out.append(f"at most {node['maxItems']} items")
    if "pattern" in node and len(node["pattern"]) <= 60:
        out.append(f"pattern `{node['pattern']}`")
    for rule in node.get("x-kubernetes-validations", []):
        if rule["rule"] == "self == oldSelf":
            out.append("immutable")
    return "; ".join(out)


def _rows(node: dict[str, Any], path: str, required: bool, out: list[str]) -> None:
    default = node.get("default")
    shown = "" if default is None or default == {} else f"`{json.dumps(default)}`"
    desc = " ".join(str(node.get("description", "")).split()).replace("|", "\\|")
    req = "yes" if required else ""
    cons = _constraints(node).replace("|", "\\|")
    out.append(f"| `{path}` | {_type_of(node)} | {req} | {shown} | {cons} | {desc} |")
    props = node.get("properties") or {}
    if not props and isinstance(node.get("items"), dict):
        props = node["items"].get("properties") or {}
        path += "[]"
        node = node["items"]
    for name, sub in props.items():
        _rows(sub, f"{path}.{name}", name in (node.get("required") or []), out)


def _rule_lines(node: dict[str, Any], path: str) -> list[str]:
    out = [
        f"- `{path or '<root>'}`: {r['message']} (`{r['rule']}`)"
        for r in node.get("x-kubernetes-validations", [])
        if r["rule"] != "self == oldSelf"
    ]
    for name, sub in (node.get("properties") or {}).items():
        if name != "status":
            out += _rule_lines(sub, f"{path}.{name}".lstrip("."))
    return out


def reference_markdown() -> str:
    lines = [
        "# CRD reference: DiffusionRun, ARRun and ScalingStudy (diffar.io/v1alpha1)",
        "",
        "Generated by `make manifests` (`python -m diffar.operator.gen_crds`) from the models in",
        "`operator/api.py`, like `crds/`; a test fails when this page drifts. `kubectl explain",
        "diffusionrun.spec.training` shows the same descriptions.",
        "",
    ]
    for crd in crds():
        names = crd["spec"]["names"]
        version = crd["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        lines += [
            f"## {names['kind']}",
            "",
            schema["description"],
            "",
            f"Plural `{names['plural']}`, short names {', '.join(f'`{n}`' for n in names['shortNames'])}, "
            f"categories {', '.join(f'`{c}`' for c in names['categories'])}; namespaced; status "
            "subresource.",
            "",
            "Validation rules (CEL) beyond the field constraints:",
            "",
        ]

        lines += _rule_lines(schema, "")
        lines += [
            "",
            "Printer columns: "
            + ", ".join(c["name"] for c in version["additionalPrinterColumns"])
            + " (`-o wide` adds those of priority 1).",
            "",
            "| field | type | required | default | constraints | description |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        out: list[str] = []
        for top in ("spec", "status"):
            _rows(schema["properties"][top], top, top == "spec", out)
        lines += out
        lines.append("")
    return "\n".join(lines)
