"""The kopf handlers: thin. Every cause ends in `reconcile.reconcile` for the run concerned.

- a run is created, resumed (operator start) or its spec changes: reconcile it;
- a PyTorchJob (or, with DIFFAR_BACKEND=trainjob, a TrainJob) or Job labelled diffar.io/run
  changes: reconcile its owner run;
- a timer per run (DIFFAR_PROGRESS_INTERVAL, 30 s): reconcile with a progress scrape while
  training (and a resync of anything missed);
- a run is deleted: its Pushgateway group (job, namespace, run) is removed (children go by
  ownerReferences); the only request the operator sends to a URL a user named.

Importing this module registers the handlers in kopf's default registry; `run_operator()` is
what `diffar operator` calls.
"""

from __future__ import annotations

import logging
import os
import urllib.request

import kopf

from diffar.operator import metrics as metrics_mod
from diffar.operator import reconcile as rec
from diffar.operator.api import GROUP, KIND_BY_PLURAL, KINDS, VERSION
from diffar.operator.builders import LABEL_RUN, grouping_key, pushgateway_url
from diffar.operator.kube import Kube
from diffar.operator.runs import Run, Settings, SpecError
from diffar.operator.status import is_finished
from diffar.operator.urls import UnsafeURL, pushgateway_group_url

log = logging.getLogger("diffar.operator")
FINALIZER = "diffar.io/finalizer"
PROGRESS_INTERVAL = float(os.environ.get("DIFFAR_PROGRESS_INTERVAL", "30"))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.watching.server_timeout = 300  # the API server ends each watch after 5 minutes
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    # The progress timer is sync (a thread): give a running invocation a second to finish when
    # its run is deleted, then poll often, so deletion is not held back by a minute.
    settings.background.instant_exit_timeout = 1.0
    settings.background.cancellation_polling = 2
    if memo.get("namespaced"):
        # Scanning lists namespaces and CRDs cluster-wide, which a namespaced install's Roles do
        # not allow (kopf retries each 403 nine times before falling back): watch exactly the
        # namespaces given and the resources the handlers name.
        settings.scanning.disabled = True
    memo.kube = Kube()
    memo.settings = Settings.from_env()
    memo.metrics = metrics_mod.get()


def _reconcile(memo: kopf.Memo, kind: str, namespace: str, name: str, scrape: bool = False):
    return rec.reconcile(
        memo.kube, kind, namespace, name, memo.settings, scrape=scrape, metrics=memo.metrics
    )


def on_run(resource: kopf.Resource, namespace: str, name: str, memo: kopf.Memo, **_) -> None:
    _reconcile(memo, KIND_BY_PLURAL[resource.plural].kind, namespace, name)


def on_timer(
    resource: kopf.Resource, namespace: str, name: str, status: dict, memo: kopf.Memo, **_
) -> None:
    if is_finished(status):
        return
    _reconcile(memo, KIND_BY_PLURAL[resource.plural].kind, namespace, name, scrape=True)


def on_run_delete(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_) -> None:
    kind = body.get("kind") or ""
    memo.metrics.runs.forget((kind, namespace, name))
    rec.forget((kind, namespace, name))
    try:
        run = Run.from_body(dict(body))
    except SpecError:
        return
    base = pushgateway_url(run, memo.settings)
    if base:
        delete_pushgateway_group(base, grouping_key(run))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect would aim the request elsewhere
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def delete_pushgateway_group(base: str, key: dict[str, str], timeout: float = 5.0) -> bool:
    """DELETE <base>/metrics/job/<job>/<label>/<value>...: best effort, never blocks deletion.

    The URL is rebuilt from the checked parts of `base` (diffar.operator.urls): the request goes
    to the documented Pushgateway API path of the named host, or nowhere."""
    job = key["job"]
    try:
        url = pushgateway_group_url(base, job, {k: v for k, v in key.items() if k != "job"})
    except UnsafeURL as e:
        log.warning("not deleting the Pushgateway group: %s", e)
        return False
    try:
        req = urllib.request.Request(url, method="DELETE")
        with _opener.open(req, timeout=timeout):
            pass
        return True
    except OSError as e:
        log.warning("could not delete Pushgateway group %s: %s", url, e)
        return False


def on_child(body: kopf.Body, namespace: str, memo: kopf.Memo, **_) -> None:
    owner = rec.owner_of(dict(body))
    if owner is not None:
        _reconcile(memo, owner[0], namespace, owner[1])


def _register() -> None:
    for kind in KINDS.values():
        args = (GROUP, VERSION, kind.plural)
        kopf.on.create(*args, backoff=5)(on_run)
        kopf.on.resume(*args, backoff=5)(on_run)
        kopf.on.update(*args, field="spec", backoff=5)(on_run)
        kopf.timer(*args, interval=PROGRESS_INTERVAL, sharp=False)(on_timer)
        kopf.on.delete(*args, backoff=5, retries=3)(on_run_delete)
    labels = {LABEL_RUN: kopf.PRESENT}
    # Only the backend's training kind: its RBAC is the only one the chart grants.
    if Settings.from_env().backend == "trainjob":
        kopf.on.event("trainer.kubeflow.org", "v1alpha1", "trainjobs", labels=labels)(on_child)
    else:
        kopf.on.event("kubeflow.org", "v1", "pytorchjobs", labels=labels)(on_child)
    kopf.on.event("batch", "v1", "jobs", labels=labels)(on_child)


_register()
# ScalingStudies: their handlers register on import, in the same registry.
from diffar.operator import study_handlers  # noqa: E402, F401


def run_operator(
    *,
    namespaces: list[str],
    liveness: str | None,
    metrics_port: int,
    standalone: bool,
    verbose: bool,
) -> int:
    if metrics_port:
        from prometheus_client import start_http_server

        metrics_mod.get()
        start_http_server(metrics_port)
    kopf.configure(verbose=verbose)
    kopf.run(
        memo=kopf.Memo(namespaced=bool(namespaces)),
        standalone=standalone,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
    return 0
