"""`diffar render` reads manifests safely: duplicate keys, aliases, deep nesting, huge files and
stray documents are refused fast, in one line, with no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from diffar.operator.safeyaml import ManifestYAMLError, load_manifest_text

from .badinput_corpus import BASE
from .conftest import ROOT

GOOD = yaml.safe_dump(BASE, sort_keys=False)
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
CASES = [
    (
        "duplicate-key",
        GOOD.replace("spec:\n", "spec:\n  suspend: true\n  suspend: false\n"),
        "duplicate key 'suspend'",
    ),
    ("duplicate-top-key", GOOD + "kind: ARRun\n", "duplicate key 'kind'"),
    ("alias-bomb", BOMB, "aliases"),
    ("merge-key", GOOD.replace("spec:\n", "x: &m {a: 1}\nspec:\n  <<: *m\n"), "aliases"),
    ("deep-nesting", "a: " + "[" * 10000 + "]" * 10000 + "\n", "nested deeper than 64"),
    (
        "deep-mappings",
        "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "v\n",
        "nested deeper",
    ),
    ("huge", "a: " + "x" * (1 << 20) + "\n", "larger than 1024 KiB"),
    ("two-documents", GOOD + "---\n" + GOOD, "exactly one run manifest"),
    ("not-a-mapping", "- a\n- b\n", "must hold a mapping"),
    ("syntax", "spec: [unclosed\n", "not valid YAML"),
    ("python-tag", "!!python/object/apply:os.system ['id']\n", "not valid YAML"),
    ("nul-byte", "a: b\x00\n", "not valid YAML"),
]


@pytest.mark.parametrize(("name", "text", "message"), CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line(name, text, message, tmp_path):
    with pytest.raises(ManifestYAMLError) as e:
        load_manifest_text(text, "run.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)
    path = tmp_path / "run.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "diffar.operator.cli", "render", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    # The CLI reads the file as text first: a NUL byte is refused there, before YAML parsing.
    message = {"nul-byte": "is a binary file"}.get(name, message)
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr[-2000:]


def test_a_plain_manifest_loads_as_before():
    assert load_manifest_text(GOOD, "run.yaml") == BASE
    anchors_alone = GOOD.replace("spec:\n", "spec: &s\n")
    assert load_manifest_text(anchors_alone, "run.yaml") == BASE
