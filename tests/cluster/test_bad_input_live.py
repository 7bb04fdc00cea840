"""The bad-input corpus applied with kubectl to the real API server while the operator runs under
the chart's RBAC: each case is refused at admission with a message naming the field, or
admitted and failed by the operator with an InvalidSpec condition and Warning event; no case ever
gets a PyTorchJob. The corpus is whatever the operator tests define (tests/operator)."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys

from testsupport import cluster

from .conftest import MINIMAL_DIFFUSION, wait_for

CORPUS_FILES = [
    cluster.ROOT / "tests" / "operator" / "corpus.py",
    cluster.ROOT / "tests" / "operator" / "test_bad_input.py",
]


def load_cases() -> list[tuple]:
    """(id, mutate, layer, text) tuples from the first corpus module that exists."""
    for path in CORPUS_FILES:
        if not path.exists():
            continue
        # Loaded as a module of the tests.operator package, so its relative imports resolve.
        name = f"tests.operator.{path.stem}"
        if name not in sys.modules:
            if str(cluster.ROOT) not in sys.path:
                sys.path.insert(0, str(cluster.ROOT))
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return list(sys.modules[name].CASES)
    raise AssertionError(f"no corpus in {CORPUS_FILES}")


def bad_manifest(ns: str, case_id: str, mutate) -> dict:
    m = copy.deepcopy(MINIMAL_DIFFUSION)
    m["metadata"]["name"] = f"bad-{case_id}"[:40]
    m["metadata"]["namespace"] = ns
    mutate(m)
    return m


def test_corpus_is_rejected_by_the_real_server_or_the_operator(control_plane, kube, ns, operator):
    cases = load_cases()
    assert len(cases) >= 30
    admitted = []
    for case_id, mutate, layer, text in cases:
        m = bad_manifest(ns, case_id, mutate)
        proc = control_plane.kubectl("apply", "-f", "-", input=json.dumps(m), check=False)
        if proc.returncode != 0:
            assert layer == "schema", f"{case_id}: refused at admission: {proc.stderr}"
            # "The DiffusionRun "x" is invalid: * spec.data.epochs: ..." or "Error from server
            # (BadRequest): ... unknown field": the server's own words, naming the field.
            assert "is invalid" in proc.stderr or "Error from server" in proc.stderr, proc.stderr
            assert text in proc.stderr, (case_id, proc.stderr)
        else:
            assert layer == "operator", f"{case_id} was admitted: {proc.stdout}"
            admitted.append((m["kind"], m["metadata"]["name"], text))
    assert len(admitted) == sum(1 for c in cases if c[2] == "operator")

    pending = {(k, n): t for k, n, t in admitted}

    def all_failed():
        for (kind, name), text in list(pending.items()):
            st = kube.get(kind, ns, name).get("status") or {}
            if st.get("phase") == "Failed":
                assert st["reason"] == "InvalidSpec" and text in st["message"], (name, st)
                cond = {c["type"]: c for c in st["conditions"]}["Validated"]
                assert cond["status"] == "False" and cond["reason"] == "InvalidSpec"
                del pending[(kind, name)]
        return not pending

    wait_for("InvalidSpec on every admitted case", all_failed, timeout=60, log=operator.output)
    warned = {
        e["involvedObject"]["name"]
        for e in kube.list("Event", ns)
        if e["type"] == "Warning" and e["reason"] == "InvalidSpec"
    }
    assert {name for _, name, _ in admitted} <= warned
    assert kube.list("PyTorchJob", ns) == []
    assert kube.list("Job", ns) == []
