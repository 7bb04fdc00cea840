"""Run manifests read from YAML safely: one document, no duplicate keys, no aliases, bounded.

PyYAML's safe loader keeps the last of two equal keys (so a manifest can say one thing to a
reviewer and another to the operator), expands aliases (a few lines can make billions of
nodes), and recurses once per nesting level (deep nesting ends in a RecursionError traceback).
`load_manifest_text` refuses all three, and text over `MAX_BYTES`, with one-line errors that
name the line; the API server never sees YAML, so this is the loader of `diffar render` and
`diffar run`.
"""

from __future__ import annotations

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent
from yaml.nodes import MappingNode

from diffar.trainer.errors import UserError

MAX_BYTES = 1 << 20
MAX_DEPTH = 64


class ManifestYAMLError(UserError):
    """A manifest file that is not plain, unambiguous YAML."""


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise ManifestYAMLError(
                f"{_where(event.start_mark)}: YAML aliases (*{event.anchor}) are not accepted "
                "in run manifests; write the value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ManifestYAMLError(f"{_where(mark)}: nested deeper than {MAX_DEPTH} levels")
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    raise ManifestYAMLError(
                        f"{_where(key_node.start_mark)}: a mapping key must be a scalar"
                    ) from None
                if key in seen:
                    raise ManifestYAMLError(
                        f"{_where(key_node.start_mark)}: duplicate key {key!r} (first at "
                        f"{_where(seen[key])})"
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_manifest_text(text: str, where: str) -> dict:
    """The one mapping `text` holds; `where` names it in errors (a path, or '-')."""
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise ManifestYAMLError(f"{where} is larger than {MAX_BYTES // 1024} KiB; not a manifest")
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except ManifestYAMLError as e:
        raise ManifestYAMLError(f"{where} {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ManifestYAMLError(f"{where} is not valid YAML: {_where(mark)}: {problem}") from None
    if len(docs) != 1:
        raise ManifestYAMLError(f"{where} must hold exactly one run manifest, found {len(docs)}")
    if not isinstance(docs[0], dict):
        raise ManifestYAMLError(f"{where} must hold a mapping (a DiffusionRun or ARRun)")
    return docs[0]
