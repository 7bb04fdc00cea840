"""KMock's Kubernetes emulator with the API-server behaviour a kopf operator relies on.

kmock 0.8's `KubernetesEmulator` is an in-memory object store over HTTP. This subclass fills the
gaps seen with kopf (issue 5):

- metadata: uid, resourceVersion (one global counter), creationTimestamp, generation (bumped on
  spec changes), generateName;
- 201 Created on create, 422 when a JSON-patch `test` op fails (kopf's optimistic concurrency),
  404/409 as the API server sends them;
- the status subresource: the main endpoint ignores status, `/status` changes only status;
- `labelSelector` on lists and watches (equality, set and existence forms);
- watches: events since the requested resourceVersion replayed from a log, and the subscription
  taken under the same lock as the listing (kmock's race between the two);
- garbage collection by ownerReferences (background propagation, finalizers honoured);
- admission for custom resources whose CRD is given: structural schema, defaults and CEL rules,
  by `diffar.operator.schemacheck` (422 Invalid with the messages).

`EmulatorServer` runs it on a loopback port in a thread of its own, so tests and the operator
(under `kopf.testing.KopfRunner`) talk to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import re
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import enums
from kmock._internal.k8s import KubernetesError, KubernetesObjectConflictError

from diffar.operator import schemacheck

MUTATIONS = (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_REQ = re.compile(
    r"^\s*(!?)([^\s!=,()]+)\s*(?:(==|=|!=)\s*([^\s,()]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$"
)


def parse_selector(selector: str | None) -> list[tuple[str, str, set[str]]]:
    """labelSelector -> [(key, op, values)] with op one of =, !=, in, notin, exists, !exists."""
    if not selector:
        return []
    parts = re.split(r",(?![^()]*\))", selector)
    out = []
    for part in parts:
        m = _REQ.match(part)
        if not m:
            raise KubernetesError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, key, eq, value, setop, values = m.groups()
        if eq:
            out.append((key, "!=" if eq == "!=" else "=", {value}))
        elif setop:
            out.append((key, setop, {v.strip() for v in values.split(",") if v.strip()}))
        else:
            out.append((key, "!exists" if neg else "exists", set()))
    return out


def selector_matches(reqs: list[tuple[str, str, set[str]]], labels: dict[str, str]) -> bool:
    for key, op, values in reqs:
        has = key in labels
        value = labels.get(key)
        ok = {
            "=": has and value in values,
            "!=": not has or value not in values,
            "in": has and value in values,
            "notin": not has or value not in values,
            "exists": has,
            "!exists": not has,
        }[op]
        if not ok:
            return False
    return True


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    crds: dict[str, dict] = attrs.field(factory=dict)  # plural -> CRD, for admission
    namespaces: set[str] = attrs.field(factory=lambda: {"default"})
    created: collections.Counter = attrs.field(factory=collections.Counter, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _log: list[tuple[int, Any, dict]] = attrs.field(factory=list, init=False)

    # -- helpers -------------------------------------------------------------------------------

    def _info(self, resource) -> Any:
        for r in self._resources:
            if r == resource:
                return self._resources[r]
        return None

    def _has_status(self, resource) -> bool:
        info = self._info(resource)
        return bool(info and "status" in info.subresources)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    async def _emit(self, resource, type_: str, obj: dict) -> None:
        event = {"type": type_, "object": copy.deepcopy(obj)}
        rv = int(obj.get("metadata", {}).get("resourceVersion") or self._rv)
        self._log.append((rv, resource, event))
        await self._buses[resource].put(event)

    def _admit(self, resource, obj: dict, old: dict | None) -> None:
        crd = self.crds.get(resource.plural)
        if crd is None:
            return
        errors = schemacheck.admit(crd, obj, old)
        if errors:
            kind = crd["spec"]["names"]["kind"]
            name = obj.get("metadata", {}).get("name")
            raise KubernetesError(
                422,
                "Invalid",
                f'{kind}.{crd["spec"]["group"]} "{name}" is invalid: ' + "; ".join(errors),
            )
        # Defaulting, as the API server stores it.
        schema = schemacheck.crd_schema(crd)
        for key in ("spec",):
            if key in obj:
                obj[key] = schemacheck.apply_defaults(schema["properties"][key], obj[key])

    # -- the namespace list (kmock 0.8 cannot parse /api/v1/namespaces) -------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.rstrip("/") != "/api/v1/namespaces":
            return await super().__call__(raw_request)
        await raw_request.read()
        names = sorted({ns for (_, ns, _) in self._objects if ns} | self.namespaces)
        items = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "uid": n}}
            for n in names
        ]
        if raw_request.query.get("watch") != "true":
            body = {"kind": "NamespaceList", "apiVersion": "v1", "items": items}
            body["metadata"] = {"resourceVersion": str(self._rv)}
            return aiohttp.web.json_response(body)
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw_request)
        timeout = float(raw_request.query.get("timeoutSeconds") or 300)
        await asyncio.sleep(timeout)  # namespaces never change here; kopf reconnects
        return response

    # -- mutations -----------------------------------------------------------------------------

    async def _handle(self, request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.action not in MUTATIONS:
            return await super()._handle(request)
        if request.action != enums.action.CREATE and request.name is None:
            return await super()._handle(request)  # collection deletes: not needed here
        try:
            async with self._lock:
                code, payload = await self._mutate(request)
        except KubernetesError as e:
            return await self._render_error(e)
        return aiohttp.web.json_response(payload, status=code)

    async def _mutate(self, request) -> tuple[int, dict]:
        resource = request.resource
        if request.action == enums.action.CREATE:
            return await self._create(resource, request.namespace, request.data)
        key = (resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            raise KubernetesError(404, "NotFound", f'{resource.plural} "{request.name}" not found')
        if request.action == enums.action.DELETE:
            obj = copy.deepcopy(self._objects[key].raw)
            return 200, await self._delete(key, obj)
        return 200, await self._update(key, request.data, request.subresource)

    async def _create(self, resource, namespace: str | None, data: Any) -> tuple[int, dict]:
        if not isinstance(data, dict):
            raise KubernetesError(400, "BadRequest", "the body must be an object")
        obj = copy.deepcopy(data)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise KubernetesError(422, "Invalid", "metadata.name: Required value")
        namespace = namespace or meta.get("namespace")
        if namespace:
            meta["namespace"] = namespace
        key = (resource, namespace, meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise KubernetesObjectConflictError(
                message=f'{resource.plural} "{meta["name"]}" already exists'
            )
        if self._has_status(resource):
            obj.pop("status", None)
        self._admit(resource, obj, None)
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            creationTimestamp=_now(),
            generation=1,
        )
        if key in self._objects:
            self._objects[key].create(obj)
        else:
            self._objects[key] = obj
        self.created[resource.plural] += 1
        await self._emit(resource, "ADDED", obj)
        return 201, obj

    async def _update(self, key, patch: Any, subresource: str | None) -> dict:
        resource = key[0]
        old = copy.deepcopy(self._objects[key].raw)
        try:
            if isinstance(patch, list):
                new = jsonpatch.apply_patch(copy.deepcopy(old), patch)
            elif isinstance(patch, dict):
                new = _merge_patch(copy.deepcopy(old), patch)
            else:
                raise KubernetesError(400, "BadRequest", "unsupported patch body")
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as e:
            raise KubernetesError(422, "Invalid", f"the patch cannot be applied: {e}") from None
        if subresource == "status":
            new = {**old, "status": new.get("status")}
            if new["status"] is None:
                new.pop("status")
        elif subresource:
            raise KubernetesError(404, "NotFound", f"no subresource {subresource}")
        elif self._has_status(resource):
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "name", "namespace", "generation"):
            if fixed in old.get("metadata", {}):
                meta[fixed] = old["metadata"][fixed]
        if subresource != "status":
            self._admit(resource, new, old)
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(meta.get("generation") or 1) + 1
        if new == old:
            return new
        meta["resourceVersion"] = self._next_rv()
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._objects[key].history.append(new)
            await self._really_delete(key, new)
            return new
        self._objects[key].history.append(new)
        await self._emit(resource, "MODIFIED", new)
        return new

    async def _delete(self, key, obj: dict) -> dict:
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = self._next_rv()
                self._objects[key].history.append(obj)
                await self._emit(key[0], "MODIFIED", obj)
            return obj
        await self._really_delete(key, obj)
        return obj

    async def _really_delete(self, key, obj: dict) -> None:
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key].delete()
        await self._emit(key[0], "DELETED", obj)
        # Garbage collection: dependents of the deleted object go too (background propagation).
        uid = obj["metadata"].get("uid")
        for dep_key, dep in list(self._objects.items()):
            if dep.deleted:
                continue
            refs = dep.raw.get("metadata", {}).get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                await self._delete(dep_key, copy.deepcopy(dep.raw))

    # -- reads ---------------------------------------------------------------------------------

    def _select(self, request, include_old: bool = False) -> list[dict]:
        reqs = parse_selector(request.params.get("labelSelector"))
        out = []
        for (resource, namespace, _name), obj in self._objects.items():
            if resource != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            if request.name is not None and _name != request.name:
                continue
            if selector_matches(reqs, obj.raw.get("metadata", {}).get("labels") or {}):
                out.append(copy.deepcopy(obj.raw))
        return out

    def _event_matches(self, request, reqs, event: dict) -> bool:
        meta = event.get("object", {}).get("metadata", {})
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        return selector_matches(reqs, meta.get("labels") or {})

    async def _serve_list(self, request):
        if self._info(request.resource) is None and not any(
            r == request.resource for r, _, _ in self._objects
        ):
            raise KubernetesError(404, "NotFound", "the server could not find the resource")
        async with self._lock:
            items = self._select(request)
            rv = str(self._rv)
        return {
            "kind": "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    async def _serve_watch(self, request):
        yield b""
        reqs = parse_selector(request.params.get("labelSelector"))
        since = request.params.get("resourceVersion")
        bus = self._buses[request.resource]
        async with self._lock:
            mark = await bus.mark()
            if since and since.isdigit() and int(since) > 0:
                backlog = [
                    copy.deepcopy(e)
                    for rv, res, e in self._log
                    if res == request.resource and rv > int(since)
                ]
            else:
                backlog = [{"type": "ADDED", "object": o} for o in self._select(request)]
        try:
            for event in backlog:
                if self._event_matches(request, reqs, event):
                    yield event
            async for event in bus.stream(since=mark):
                if self._event_matches(request, reqs, event):
                    yield event
        finally:
            await bus.unmark(mark)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge_patch(target.get(key), value)
    return target


RESOURCES = {
    "v1/namespaces": dict(kind="Namespace", namespaced=False, verbs={"list", "watch", "get"}),
    "v1/events": dict(kind="Event", namespaced=True, verbs={"create", "list", "get"}),
    "events.k8s.io/v1/events": dict(kind="Event", namespaced=True, verbs={"create", "list"}),
    "v1/configmaps": dict(kind="ConfigMap", namespaced=True),
    "v1/pods": dict(kind="Pod", namespaced=True, subresources={"status"}),
    "batch/v1/jobs": dict(kind="Job", namespaced=True, subresources={"status"}),
    "kubeflow.org/v1/pytorchjobs": dict(
        kind="PyTorchJob", namespaced=True, subresources={"status"}
    ),
}
VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}


class EmulatorServer:
    """The emulator on 127.0.0.1:<free port>, served from a thread with its own event loop."""

    def __init__(self, crds: list[dict]):
        self.crds = crds
        self.emulator: Emulator | None = None
        self.url: str = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="kmock", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        crds = {c["spec"]["names"]["plural"]: c for c in self.crds}
        async with Emulator(crds=crds) as emu, kmock.Server(emu) as server:
            for key, info in RESOURCES.items():
                emu.resources[key] = kmock.ResourceInfo(**{"verbs": VERBS, **info})
            for crd in self.crds:
                names = crd["spec"]["names"]
                version = crd["spec"]["versions"][0]
                key = f"{crd['spec']['group']}/{version['name']}/{names['plural']}"
                emu.resources[key] = kmock.ResourceInfo(
                    kind=names["kind"],
                    singular=names["singular"],
                    namespaced=True,
                    verbs=VERBS,
                    shortnames=set(names.get("shortNames", [])),
                    subresources=set(version.get("subresources", {})),
                )
            self.emulator = emu
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> EmulatorServer:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
