"""Offline checks of objects against a CRD's OpenAPI v3 schema: what the API server would do.

Used by the contract and bad-input tests (it needs `jsonschema`, and `cel-python` for CEL rules;
both are imported when called):

- `structural_errors(schema, obj)`: the schema as JSON Schema (draft 4, which OpenAPI v3.0
  follows): `nullable` becomes a null type, `x-kubernetes-int-or-string` an integer-or-string,
  and every object with properties and without `x-kubernetes-preserve-unknown-fields` rejects
  unknown fields (where the API server would prune them silently, a test should fail).
- `apply_defaults(schema, obj)`: structural defaulting, as the API server does before CEL.
- `cel_errors(schema, obj, old)`: every `x-kubernetes-validations` rule evaluated with `self`
  (and `oldSelf` when `old` is given: transition rules such as immutability).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any


def to_jsonschema(schema: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default"):
            continue
        if key == "properties":
            out[key] = {k: to_jsonschema(v, strict=strict) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_jsonschema(value, strict=strict)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_jsonschema(v, strict=strict) for v in value]
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.pop("anyOf", None)
        pattern = out.pop("pattern", None)
        string: dict[str, Any] = {"type": "string"}
        if pattern:
            string["pattern"] = pattern
        out["anyOf"] = [{"type": "integer"}, string]
    if schema.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        strict
        and schema.get("type") == "object"
        and "properties" in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in schema
    ):
        out["additionalProperties"] = False
    return out


@cache
def _validator_class():
    """Draft 4, with `pattern` matched as the API server does (Go's RE2: `$` is the end of the
    text; Python's `re.search` lets "value\\n" through `^value$`) and `x-kubernetes-list-type:
    set` as uniqueItems (the API server refuses duplicates in such lists)."""
    import jsonschema
    import re2

    def pattern(validator, patrn, instance, schema):
        if validator.is_type(instance, "string") and not re2.search(patrn, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")

    return jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": pattern})


def structural_errors(schema: dict[str, Any], obj: Any, *, strict: bool = True) -> list[str]:
    validator = _validator_class()(to_jsonschema(schema, strict=strict))
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    obj = copy.deepcopy(obj)
    _default(schema, obj)
    return obj


def _default(schema: dict[str, Any], obj: Any) -> None:
    if isinstance(obj, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                _default(sub, obj[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for value in obj.values():
                _default(extra, value)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            _default(schema["items"], item)


@cache
def _program(rule: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_errors(schema: dict[str, Any], obj: Any, old: Any = None, *, path: str = "") -> list[str]:
    import celpy

    errors: list[str] = []
    for v in schema.get("x-kubernetes-validations", []):
        rule = v["rule"]
        uses_old = "oldSelf" in rule
        if uses_old and old is None:
            continue  # transition rules run on updates only
        activation = {"self": celpy.json_to_cel(obj)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            result = _program(rule).evaluate(activation)
        except Exception as e:  # the API server reports evaluation errors as invalid too
            result = e
        if isinstance(result, Exception) or not bool(result):
            errors.append(f"{path or '<root>'}: {v.get('message') or rule}")
    if isinstance(obj, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in obj:
                child_old = old.get(name) if isinstance(old, dict) else None
                errors += cel_errors(sub, obj[name], child_old, path=f"{path}.{name}".lstrip("."))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            errors += cel_errors(schema["items"], item, None, path=f"{path}[{i}]")
    return errors


def crd_schema(crd: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if version is None or v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(version)


def admit(crd: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """What the API server would say to a create (or, with `old`, an update): [] admits it."""
    schema = crd_schema(crd)
    errors = structural_errors(schema, obj)
    if errors:
        return errors
    defaulted = apply_defaults(schema, obj)
    old_defaulted = apply_defaults(schema, old) if old is not None else None
    return cel_errors(schema, defaulted, old_defaulted)
