"""The kopf handlers of ScalingStudies: thin. Every cause ends in `study_reconcile`.

- a study is created, resumed (operator start) or its spec changes: reconcile it;
- a child run (ARRun/DiffusionRun) or a fit Job labelled diffar.io/study changes: reconcile
  its study, so a finished child frees its slot at once;
- a timer per study (DIFFAR_PROGRESS_INTERVAL) resyncs anything missed while it is unfinished;
- a study is deleted: its metrics go; children go by ownerReferences (garbage collection).

`diffar.operator.handlers` imports this module, so `diffar operator` serves studies too.
"""

from __future__ import annotations

import os

import kopf

from diffar.operator import study_reconcile as rec
from diffar.operator.api import GROUP, KINDS, VERSION
from diffar.operator.study import LABEL_STUDY
from diffar.operator.study_api import PLURAL

INTERVAL = float(os.environ.get("DIFFAR_PROGRESS_INTERVAL", "30"))


def _kube(memo: kopf.Memo):
    if getattr(memo, "kube", None) is None:
        from diffar.operator.kube import Kube

        memo.kube = Kube()
    return memo.kube


def on_study(namespace: str, name: str, memo: kopf.Memo, **_) -> None:
    rec.register_metrics()
    rec.reconcile_study(_kube(memo), namespace, name)


def on_study_timer(namespace: str, name: str, status: dict, memo: kopf.Memo, **_) -> None:
    if status.get("phase") in ("Succeeded", "Failed") and status.get("reason") != "InvalidSpec":
        return
    rec.register_metrics()
    rec.reconcile_study(_kube(memo), namespace, name)


def on_study_delete(namespace: str, name: str, **_) -> None:
    rec.forget((namespace, name))


def on_study_child(body: kopf.Body, namespace: str, memo: kopf.Memo, **_) -> None:
    study = rec.owner_study(dict(body))
    if study:
        rec.reconcile_study(_kube(memo), namespace, study)


def _register() -> None:
    args = (GROUP, VERSION, PLURAL)
    kopf.on.create(*args, backoff=5)(on_study)
    kopf.on.resume(*args, backoff=5)(on_study)
    kopf.on.update(*args, field="spec", backoff=5)(on_study)
    kopf.timer(*args, interval=INTERVAL, sharp=False)(on_study_timer)
    kopf.on.delete(*args, backoff=5, retries=3)(on_study_delete)
    labels = {LABEL_STUDY: kopf.PRESENT}
    for kind in KINDS.values():
        kopf.on.event(GROUP, VERSION, kind.plural, labels=labels)(on_study_child)
    kopf.on.event("batch", "v1", "jobs", labels=labels)(on_study_child)


_register()
