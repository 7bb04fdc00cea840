"""A small dict-in, dict-out Kubernetes client over the `kubernetes` package's ApiClient.

The operator needs only a handful of verbs on a handful of kinds; raw paths keep every object a
plain dict (as the builders produce them). Blocking: the kopf handlers that use it are sync and
run in kopf's executor.
"""

from __future__ import annotations

import json
from typing import Any

from diffar.operator.api import GROUP, KINDS, VERSION

# kind -> (API prefix, plural)
PATHS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Job": ("/apis/batch/v1", "jobs"),
    "PyTorchJob": ("/apis/kubeflow.org/v1", "pytorchjobs"),
    "TrainJob": ("/apis/trainer.kubeflow.org/v1alpha1", "trainjobs"),
    **{k.kind: (f"/apis/{GROUP}/{VERSION}", k.plural) for k in KINDS.values()},
    "ScalingStudy": (f"/apis/{GROUP}/{VERSION}", "scalingstudies"),
}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: str = ""):
        self.status = status
        self.reason = reason
        self.body = body
        super().__init__(f"HTTP {status} {reason}: {body[:300]}")


def load_api_client():
    """In-cluster credentials, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    import os

    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        # KUBECONFIG is read now, not when the kubernetes package was imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg)
    return client.ApiClient(cfg)


class Kube:
    def __init__(self, api_client=None, *, timeout: float = 30.0):
        self.api = api_client if api_client is not None else load_api_client()
        self.timeout = timeout

    def _path(self, kind: str, namespace: str, name: str | None = None, sub: str | None = None):
        prefix, plural = PATHS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        if name:
            path += f"/{name}"
        if sub:
            path += f"/{sub}"
        return path

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list | None = None,
        content_type: str = "application/json",
    ) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=self.timeout,
            )
        except ApiException as e:
            raise ApiError(e.status or 0, e.reason or "", e.body or "") from None
        data = resp.data
        return json.loads(data) if data else {}

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self._call("GET", self._path(kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, label_selector: str | None = None) -> list[dict]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return self._call("GET", self._path(kind, namespace), query=query).get("items") or []

    def create(self, obj: dict) -> tuple[dict, bool]:
        """Create obj; (the object, True) or, when it exists already, (the existing one, False)."""
        meta = obj["metadata"]
        try:
            return self._call("POST", self._path(obj["kind"], meta["namespace"]), body=obj), True
        except ApiError as e:
            if e.status != 409:
                raise
        existing = self.get(obj["kind"], meta["namespace"], meta["name"])
        if existing is None:  # deleted in between: the next reconcile creates it
            raise ApiError(409, "Conflict", f"{obj['kind']} {meta['name']} is being deleted")
        return existing, False

    def patch(self, kind: str, namespace: str, name: str, patch: dict, *, sub: str | None = None):
        return self._call(
            "PATCH",
            self._path(kind, namespace, name, sub),
            body=patch,
            content_type="application/merge-patch+json",
        )

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self._call("DELETE", self._path(kind, namespace, name))
        except ApiError as e:
            if e.status != 404:
                raise
