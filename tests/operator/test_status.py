"""The run state machine (`diffar.operator.status.decide`), pure: bodies and children in."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

from diffar.operator import status as st
from diffar.operator.runs import Settings

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
SETTINGS = Settings()


def body(manifest: dict, status: dict | None = None, generation: int = 1) -> dict:
    b = copy.deepcopy(manifest)
    b["metadata"].update(uid=UID, generation=generation)
    if status is not None:
        b["status"] = status
    return b


def job(kind: str, name: str, conditions: list[tuple[str, str]] = (), suspend: bool = False):
    obj = {
        "kind": kind,
        "metadata": {"name": name, "ownerReferences": [{"uid": UID, "controller": True}]},
        "spec": {"runPolicy": {"suspend": suspend}}
        if kind == "PyTorchJob"
        else {"suspend": suspend},
        "status": {
            "conditions": [
                {
                    "type": t,
                    "status": "True",
                    "message": m,
                    "lastTransitionTime": "2026-01-01T11:00:00Z",
                }
                for t, m in conditions
            ]
        },
    }
    return obj


def step(manifest, prev_status, observed, now=NOW):
    return st.decide(body(manifest, prev_status), observed, SETTINGS, now)


def test_create_makes_configmap_and_pytorchjob(manifest):
    d = step(manifest, None, st.Observed())
    assert [o["kind"] for o in d.create] == ["ConfigMap", "PyTorchJob"]
    assert d.phase == "Pending" and d.status["reason"] == "ChildrenCreated"
    assert d.status["objective"] == "mdm"
    assert d.status["observedGeneration"] == 1
    assert d.status["children"] == {
        "configMap": "mdm-small-config",
        "trainJob": "mdm-small-train",
        "evalJob": None,
    }
    # 1M tokens, L=128: 7812 sequences/epoch, 4 epochs, batch 32 -> 976 steps
    assert d.status["progress"]["totalSteps"] == 976
    conds = {c["type"]: c for c in d.status["conditions"]}
    assert conds["Validated"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"
    assert all(c["lastTransitionTime"] == "2026-01-01T12:00:00Z" for c in conds.values())
    assert d.events == [("Normal", "ChildrenCreated", "Pending: PyTorchJob created")]
    for obj in d.create:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == UID


def test_full_lifecycle(manifest):
    d = step(manifest, None, st.Observed())
    cm, _pj = d.create
    s = d.status
    # Running, with a progress sample, then another a minute later: ETA from the rate.
    obs = st.Observed(
        config_map=cm, train_job=job("PyTorchJob", "mdm-small-train", [("Running", "")])
    )
    obs.progress = {"step": 100, "loss": 7.5, "tokens_seen": 409600, "epoch": 0.41}
    d = step(manifest, s, obs)
    assert d.phase == "Training" and d.create == [] and d.patch == []
    s = d.status
    assert s["progress"]["step"] == 100 and s["progress"]["loss"] == 7.5
    assert s["startTime"] == "2026-01-01T12:00:00Z"
    obs.progress = {"step": 160, "loss": 6.0, "tokens_seen": 655360, "epoch": 0.66}
    d = step(manifest, s, obs, NOW + timedelta(seconds=60))
    s = d.status
    # 60 steps/minute, 816 steps left -> 13.6 minutes
    assert s["progress"]["eta"] == "2026-01-01T12:14:36Z"
    assert s["progress"]["summary"] == "160/976 (16%)"
    # Restarting counts one restart, once.
    obs.train_job = job("PyTorchJob", "mdm-small-train", [("Restarting", "pod evicted")])
    d = step(manifest, s, obs)
    assert d.phase == "Training" and d.status["reason"] == "TrainingRestarting"
    assert d.status["restarts"] == 1
    d = step(manifest, d.status, obs)
    assert d.status["restarts"] == 1
    s = d.status
    # Succeeded -> the eval Job is created.
    obs.train_job = job("PyTorchJob", "mdm-small-train", [("Succeeded", "done")])
    obs.progress = None
    d = step(manifest, s, obs)
    assert [o["kind"] for o in d.create] == ["Job"]
    assert d.phase == "Evaluating"
    assert d.status["progress"]["step"] == 976 and "eta" not in d.status["progress"]
    assert d.status["children"]["evalJob"] == "mdm-small-eval"
    s = d.status
    obs.eval_job = job("Job", "mdm-small-eval")
    d = step(manifest, s, obs)
    assert d.phase == "Evaluating" and d.create == []
    # Complete with results.
    obs.eval_job = job("Job", "mdm-small-eval", [("Complete", "")])
    obs.eval_results = st.parse_results(
        json.dumps(
            {
                "loss": 3.55,
                "tasks": {"piqa": {"acc": 0.6072}, "sciq": 0.6867},
                "results_uri": "s3://runs/r.json",
            }
        )
    )
    d = step(manifest, d.status, obs)
    assert d.phase == "Succeeded" and d.status["reason"] == "EvaluationSucceeded"
    assert d.status["results"] == {
        "valLoss": 3.55,
        "tasks": {"piqa": 0.6072, "sciq": 0.6867},
        "resultsUri": "s3://runs/r.json",
    }
    conds = {c["type"]: c["status"] for c in d.status["conditions"]}
    assert conds == {
        "Validated": "True",
        "Training": "False",
        "Evaluated": "True",
        "Suspended": "False",
        "Ready": "True",
    }
    assert d.status["completionTime"]
    # Terminal: nothing more happens, even if a child disappears.
    d2 = step(manifest, d.status, st.Observed(config_map=cm))
    assert d2.create == [] and d2.phase == "Succeeded" and d2.events == []


def test_training_failure_carries_the_childs_message(manifest):
    s = step(manifest, None, st.Observed()).status
    obs = st.Observed(
        config_map={"metadata": {"ownerReferences": [{"uid": UID, "controller": True}]}},
        train_job=job("PyTorchJob", "mdm-small-train", [("Failed", "OOMKilled on master-0")]),
    )
    d = step(manifest, s, obs)
    assert d.phase == "Failed" and d.status["reason"] == "TrainingFailed"
    assert "OOMKilled" in d.status["message"]
    assert d.events[0][0] == "Warning"


def test_eval_failure(manifest):
    own = {"metadata": {"ownerReferences": [{"uid": UID, "controller": True}]}}
    obs = st.Observed(
        config_map=own,
        train_job=job("PyTorchJob", "mdm-small-train", [("Succeeded", "")]),
        eval_job=job("Job", "mdm-small-eval", [("Failed", "BackoffLimitExceeded")]),
        eval_message="Traceback: CUDA error",
    )
    d = step(manifest, {"phase": "Evaluating"}, obs)
    assert d.phase == "Failed" and d.status["reason"] == "EvaluationFailed"
    assert d.status["message"] == "BackoffLimitExceeded; Traceback: CUDA error"


def test_suspend_and_resume(manifest):
    own = {"metadata": {"ownerReferences": [{"uid": UID, "controller": True}]}}
    running = job("PyTorchJob", "mdm-small-train", [("Running", "")])
    manifest["spec"]["suspend"] = True
    d = step(manifest, {"phase": "Training"}, st.Observed(config_map=own, train_job=running))
    assert d.patch == [
        ("PyTorchJob", "mdm-small-train", {"spec": {"runPolicy": {"suspend": True}}})
    ]
    assert d.phase == "Suspended"
    suspended = job("PyTorchJob", "mdm-small-train", [("Suspended", "")], suspend=True)
    d = step(manifest, d.status, st.Observed(config_map=own, train_job=suspended))
    assert d.patch == [] and d.phase == "Suspended"
    manifest["spec"]["suspend"] = False
    d = step(manifest, d.status, st.Observed(config_map=own, train_job=suspended))
    assert d.patch == [
        ("PyTorchJob", "mdm-small-train", {"spec": {"runPolicy": {"suspend": False}}})
    ]
    assert d.phase == "Pending"


def test_kueue_queued_and_not_unsuspended_by_the_operator(manifest):
    manifest["spec"]["scheduling"] = {"kueue": {"queueName": "gpus"}}
    d = step(manifest, None, st.Observed())
    assert d.phase == "Queued"
    pj = d.create[1]
    assert pj["spec"]["runPolicy"]["suspend"] is True
    assert pj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    waiting = job(
        "PyTorchJob", "mdm-small-train", [("Created", ""), ("Suspended", "")], suspend=True
    )
    d = step(manifest, d.status, st.Observed(config_map=d.create[0], train_job=waiting))
    assert d.phase == "Queued" and d.patch == []


def test_invalid_spec_fails_without_children(manifest):
    manifest["spec"]["model"]["preset"] = "9B"
    d = step(manifest, None, st.Observed())
    assert d.create == [] and d.phase == "Failed" and d.status["reason"] == "InvalidSpec"
    assert "unknown" in d.status["message"]
    assert d.events[0][:2] == ("Warning", "InvalidSpec")
    # Fixing a mutable field of an invalid run (here the preset, as a test shortcut) recovers.
    assert "completionTime" not in d.status  # not finished: it can still be fixed
    manifest["spec"]["model"]["preset"] = "tiny"
    d = step(manifest, d.status, st.Observed())
    assert d.phase == "Pending" and len(d.create) == 2


def test_child_conflict(manifest):
    foreign = {"metadata": {"name": "mdm-small-config", "ownerReferences": []}}
    d = step(manifest, None, st.Observed(config_map=foreign))
    assert d.phase == "Failed" and d.status["reason"] == "ChildConflict" and d.create == []
    # Not final: once the foreign object is gone, the run starts.
    d = step(manifest, d.status, st.Observed())
    assert d.phase == "Pending" and len(d.create) == 2


def test_children_of_a_deleted_namesake_are_waited_for(manifest):
    old = {
        "metadata": {
            "name": "mdm-small-train",
            "ownerReferences": [
                {"kind": "DiffusionRun", "name": "mdm-small", "uid": "old", "controller": True}
            ],
        }
    }
    d = step(manifest, None, st.Observed(train_job=old))
    assert d.phase == "Pending" and d.status["reason"] == "WaitingForOldChildren"
    assert d.create == []


def test_condition_transition_time_is_stable():
    conds = st.set_condition([], "Ready", False, "A", "", 1, NOW)
    later = NOW + timedelta(hours=1)
    same = st.set_condition(conds, "Ready", False, "B", "m", 2, later)
    assert same[0]["lastTransitionTime"] == conds[0]["lastTransitionTime"]
    assert same[0]["reason"] == "B" and same[0]["observedGeneration"] == 2
    flipped = st.set_condition(same, "Ready", True, "C", "", 2, later)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T13:00:00Z"


def test_parse_results_tolerates_garbage():
    assert st.parse_results(None) is None
    assert st.parse_results("Traceback (most recent call last)") is None
    assert st.parse_results("[1, 2]") is None
    assert st.parse_results('{"val_loss": 3.7, "tasks": {"copa": "x"}}') == {
        "valLoss": 3.7,
        "tasks": {},
    }


def test_a_mutable_field_going_bad_mid_training_warns_but_does_not_fail(manifest):
    own = {"metadata": {"ownerReferences": [{"uid": UID, "controller": True}]}}
    running = job("PyTorchJob", "mdm-small-train", [("Running", "")])
    manifest["spec"]["resources"]["gpusPerNode"] = 3  # 6 ranks do not divide globalBatch 32
    d = step(manifest, {"phase": "Training"}, st.Observed(config_map=own, train_job=running))
    assert d.phase == "Training" and d.create == [] and d.patch == []
    validated = {c["type"]: c for c in d.status["conditions"]}["Validated"]
    assert validated["status"] == "False" and "world size 6" in validated["message"]
    assert ("Warning", "InvalidSpec") in [e[:2] for e in d.events]
    again = step(manifest, d.status, st.Observed(config_map=own, train_job=running))
    assert [e for e in again.events if e[1] == "InvalidSpec"] == []


def test_eval_settings_edited_before_evaluation_reach_eval_json(manifest):
    first = step(manifest, None, st.Observed())
    cm = first.create[0]
    succeeded = job("PyTorchJob", "mdm-small-train", [("Succeeded", "")])
    d = step(manifest, {"phase": "Training"}, st.Observed(config_map=cm, train_job=succeeded))
    assert d.patch == [] and [o["kind"] for o in d.create] == ["Job"]
    manifest["spec"]["evaluation"] = {"tasks": ["piqa"], "mcSamples": 8}
    d = step(manifest, {"phase": "Training"}, st.Observed(config_map=cm, train_job=succeeded))
    ((kind, name, patch),) = d.patch
    assert (kind, name) == ("ConfigMap", "mdm-small-config")
    fresh = json.loads(patch["data"]["eval.json"])
    assert fresh["tasks"] == ["piqa"] and fresh["samples"] == 8


def test_results_from_the_evaluators_own_summary():
    """Contract with diffar.evaluator.run.summary (what `diffar eval` writes to the termination
    log): the operator reads every number it carries."""
    from diffar.evaluator.run import summary

    results = {
        "loss": 3.55,
        "loss_estimator": "elbo",
        "validation": {"elbo": {"loss": 3.55, "stderr": 0.01}, "chain_rule": {"loss": 3.41}},
        "tasks": {"piqa": {"acc": 0.6072, "n": 1838}, "sciq": {"acc": float("nan")}},
        "results_uri": "s3://runs/r/ckpt/results.json",
    }
    parsed = st.parse_results(summary(results))
    assert parsed == {
        "valLoss": 3.55,
        "lossEstimator": "elbo",
        "validation": {"elbo": 3.55, "chain_rule": 3.41},
        "tasks": {"piqa": 0.6072},
        "resultsUri": "s3://runs/r/ckpt/results.json",
    }


def test_a_nan_loss_never_reaches_the_status(manifest):
    """A diverged trainer exposes NaN/Inf: the status stays valid JSON, the last finite kept."""
    from diffar.operator.progress import parse_metrics

    d = step(manifest, None, st.Observed())
    cm, _ = d.create
    obs = st.Observed(
        config_map=cm, train_job=job("PyTorchJob", "mdm-small-train", [("Running", "")])
    )
    obs.progress = {"step": 100, "loss": 7.5, "tokens_seen": 409600, "epoch": 0.41}
    s = step(manifest, d.status, obs).status
    text = "diffar_train_step 120\ndiffar_train_loss NaN\ndiffar_train_epoch +Inf\n"
    obs.progress = parse_metrics(text)
    assert obs.progress == {"step": 120.0}
    s = step(manifest, s, obs).status
    assert s["progress"]["loss"] == 7.5 and s["progress"]["step"] == 120
    # Whatever reaches decide (a sample, an earlier status), the PATCH it produces is JSON.
    obs.progress = {"step": 130, "loss": float("nan"), "epoch": float("inf")}
    s = step(manifest, {**s, "weird": [float("-inf"), 1.0]}, obs).status
    json.dumps(s, allow_nan=False)
    assert s["progress"]["step"] == 130 and s["progress"]["loss"] == 7.5


def test_nan_in_the_evaluators_summary_is_dropped():
    results = st.parse_results('{"loss": NaN, "tasks": {"copa": Infinity, "piqa": 0.6}}')
    assert results == {"tasks": {"piqa": 0.6}}
    json.dumps(results, allow_nan=False)


def test_the_progress_endpoint_is_read_with_a_size_limit():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from diffar.operator import progress

    bodies = {
        "/small": b"diffar_train_step 5\n",
        "/huge": b"diffar_train_step 5\n" + b"# padding\n" * (progress.MAX_BYTES // 10 + 1),
    }
    read: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = bodies[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
                read.append(len(body))
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert progress.scrape(f"{base}/small") == {"step": 5.0}
        assert progress.scrape(f"{base}/huge") is None
    finally:
        server.shutdown()


def test_version_skew_never_fails_a_running_run(manifest):
    """A newer CRD's field this operator does not know: report it, keep the run training."""
    d = step(manifest, None, st.Observed())
    cm, _ = d.create
    obs = st.Observed(
        config_map=cm, train_job=job("PyTorchJob", "mdm-small-train", [("Running", "")])
    )
    s = step(manifest, d.status, obs).status
    assert s["phase"] == "Training"
    newer = copy.deepcopy(manifest)
    newer["spec"]["ar"] = {"inputMaskRate": 0.1}
    d = step(newer, s, obs)
    assert d.phase == "Training" and d.status["reason"] == "TrainingRunning"
    assert d.create == [] and d.patch == []
    validated = next(c for c in d.status["conditions"] if c["type"] == "Validated")
    assert validated["status"] == "False" and validated["reason"] == "SpecNotUnderstood"
    assert "spec.ar" in validated["message"]
    assert [e[:2] for e in d.events] == [("Warning", "SpecNotUnderstood")]
    assert step(newer, d.status, obs).events == []  # said once
    # The same field on a run with no children yet: refused (and retried after an edit).
    fresh = step(newer, None, st.Observed())
    assert fresh.phase == "Failed" and fresh.status["reason"] == "InvalidSpec"
    assert fresh.create == []
