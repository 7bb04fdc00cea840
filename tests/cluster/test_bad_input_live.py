"""The bad-input corpus (tests/operator/badinput_corpus.py) applied with kubectl to the real API
server while the operator runs under the chart's RBAC: each bad case is refused at admission with
a message naming the field, or admitted and failed by the operator with an InvalidSpec condition
and a Warning Event; updates are applied over the stored object they start from; no bad case
ever gets a PyTorchJob, and the valid edge cases are admitted and get theirs."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

from testsupport import cluster

from .conftest import wait_for

CORPUS = cluster.ROOT / "tests" / "operator" / "badinput_corpus.py"


def load_corpus():
    """The corpus module: plain data, importable on its own."""
    name = "diffar_badinput_corpus"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, CORPUS)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _text(stderr: str) -> str:
    """kubectl's message with list indices as path segments, as the corpus names fields."""
    return re.sub(r"\[(\d+)\]", r".\1", stderr)


def test_corpus_is_refused_by_the_real_server_or_the_operator(control_plane, kube, ns, operator):
    corpus = load_corpus()
    cases = corpus.CASES
    assert sum(1 for c in cases if c["layer"] != "accept") >= 80

    def apply(doc: dict):
        doc = {**doc, "metadata": {**doc["metadata"], "namespace": ns}}
        return control_plane.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)

    admitted_bad, accepted = {}, []
    for case in cases:
        name, layer, field = case["name"], case["layer"], case["field"]
        if "old" in case:
            old = apply(corpus.manifest(case, old=True))
            assert old.returncode == 0, (name, old.stderr)
        m = corpus.manifest(case)
        proc = apply(m)
        key = (m["kind"], m["metadata"]["name"])
        if layer == "schema":
            assert proc.returncode != 0, f"{name}: admitted: {proc.stdout}"
            # "The DiffusionRun "x" is invalid: * spec...: ..." or "Error from server
            # (BadRequest): ... strict decoding error: unknown field": the server's own words.
            assert "is invalid" in proc.stderr or "Error from server" in proc.stderr, proc.stderr
            assert field in _text(proc.stderr), (name, field, proc.stderr)
        else:
            assert proc.returncode == 0, (name, proc.stderr)
            if layer == "operator":
                admitted_bad[key] = field
            elif "old" not in case:
                accepted.append(key)

    def all_failed():
        for (kind, run), field in list(admitted_bad.items()):
            st = kube.get(kind, ns, run).get("status") or {}
            if st.get("phase") == "Failed":
                assert st["reason"] == "InvalidSpec" and field in st["message"], (run, st)
                cond = {c["type"]: c for c in st["conditions"]}["Validated"]
                assert cond["status"] == "False" and cond["reason"] == "InvalidSpec"
                del admitted_bad[(kind, run)]
        return not admitted_bad

    names = {run for _, run in admitted_bad}
    wait_for("InvalidSpec on every admitted bad case", all_failed, 120, log=operator.output)
    warned = {
        e["involvedObject"]["name"]
        for e in kube.list("Event", ns)
        if e["type"] == "Warning" and e["reason"] == "InvalidSpec"
    }
    assert names <= warned, names - warned
    # The valid edge cases get their PyTorchJobs; nothing else has one.
    wait_for(
        "the valid edge cases' PyTorchJobs",
        lambda: (
            {p["metadata"]["name"] for p in kube.list("PyTorchJob", ns)}
            >= {f"{run}-train" for _, run in accepted}
        ),
        120,
        log=operator.output,
    )
    jobs = {p["metadata"]["labels"]["diffar.io/run"] for p in kube.list("PyTorchJob", ns)}
    update_names = {corpus.manifest(c)["metadata"]["name"] for c in cases if "old" in c}
    assert jobs - update_names == {run for _, run in accepted}
    assert not jobs & names
