"""The checkpoint commit protocol on a store: s3://, file:// or the local checkpoint dir itself.

A checkpoint is TAG/ (tags are `step-NNNNNNNN`) holding every rank's files. It is *committed*
once TAG/.diffar-complete.json exists; that marker lists every file with its size and sha256
and is written by rank 0 only after every node reported its files stored. The committed step of
a run is its newest committed tag. `latest` is written after the marker, for DeepSpeed's tools
and for people; resuming never trusts it, because DeepSpeed (and a crash between upload and
commit) can leave a `latest` that names files no other node has.

    upload_checkpoint_files(local, uri, tag)     each node, its own ranks' files
    commit_checkpoint(uri, tag, keep)             rank 0, after all uploads: marker, latest, prune
    newest_committed(uri) -> Committed | None     what every rank resumes from
    fetch_checkpoint(uri, local, tag)             one process per node: the tag's files, verified
    newest_intact_local(dir) -> Committed | None  a checkpoint dir used in place: the newest
                                                  committed tag whose files still match its marker

Pruning only ever deletes `step-*` tags (other prefixes, such as export/, are not checkpoints)
and never the newest committed one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from diffar.trainer.shards import sha256_file
from diffar.trainer.storage import (
    LocalStore,
    NotFoundError,
    StorageError,
    StorageOptions,
    Store,
    _Meter,
    _node_lock,
    _options,
    is_remote,
    join,
    local_path,
    open_store,
    split_s3,
)

CKPT_LATEST = "latest"
CKPT_MARKER = ".diffar-complete.json"
TAG_PREFIX = "step-"
_TAG = re.compile(r"step-\d{8,}")


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def is_tag(name: str) -> bool:
    return _TAG.fullmatch(name) is not None


def step_of(tag: str) -> int:
    return int(tag[len(TAG_PREFIX) :])


@dataclass(frozen=True)
class Committed:
    """A committed checkpoint: its tag and the files its marker lists (rel -> size, sha256)."""

    tag: str
    files: dict[str, dict]

    @property
    def step(self) -> int:
        return step_of(self.tag)

    def marker_json(self) -> str:
        return json.dumps({"tag": self.tag, "files": self.files, "time": time.time()}, indent=1)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _same_place(uri: str, local_dir: Path) -> bool:
    return not is_remote(uri) and local_path(uri).resolve() == Path(local_dir).resolve()


def local_checkpoint_dir(remote_uri: str, cache_dir: str | Path = ".diffar-cache") -> Path:
    """Where a run keeps the local copy of an s3:// checkpoint dir (plain paths: themselves)."""
    if not is_remote(remote_uri):
        return local_path(remote_uri)
    bucket, prefix = split_s3(remote_uri)
    return Path(cache_dir) / "checkpoints" / bucket / prefix


def read_marker(store: Store, tag: str) -> Committed | None:
    """The tag's marker, or None when it is absent or unreadable (then the tag is not committed)."""
    try:
        raw = json.loads(store.get_bytes(f"{tag}/{CKPT_MARKER}"))
        files = {
            str(rel): {"size": int(info["size"]), "sha256": str(info.get("sha256") or "")}
            for rel, info in raw["files"].items()
        }
    except NotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if raw.get("tag") != tag or not files:
        return None
    return Committed(tag, files)


def list_checkpoint_tags(store: Store) -> tuple[list[str], set[str]]:
    """Every `step-*` tag in the store (sorted oldest first) and the committed ones among them."""
    tags: set[str] = set()
    committed: set[str] = set()
    for key in store.list(""):
        head, sep, rest = key.partition("/")
        if not sep or not is_tag(head):
            continue
        tags.add(head)
        if rest == CKPT_MARKER:
            committed.add(head)
    return sorted(tags, key=step_of), committed


def newest_committed(uri: str, options: StorageOptions | dict | None = None) -> Committed | None:
    """The newest committed checkpoint in the store at `uri`, or None when it holds none."""
    store = open_store(uri, options)
    tags, committed = list_checkpoint_tags(store)
    for tag in reversed(tags):
        if tag in committed and (c := read_marker(store, tag)) is not None:
            return c
    return None


def verify_files(root: Path, c: Committed, check_sha256: bool = True) -> str | None:
    """None when ROOT/TAG holds every file the marker lists, same size and sha256; else why not."""
    for rel, info in sorted(c.files.items()):
        path = root / c.tag / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != info["size"]:
            return f"{rel} is truncated ({path.stat().st_size} of {info['size']} bytes)"
        if check_sha256 and info["sha256"] and sha256_file(path) != info["sha256"]:
            return f"{rel} does not match its sha256 (corrupted)"
    return None


def newest_intact_local(
    directory: str | Path, log: Callable[[str], None] = _say
) -> Committed | None:
    """For a checkpoint dir used in place: the newest committed tag whose files all match its
    marker. Broken ones (truncated or corrupted files, a marker that does not parse) are
    reported and skipped, so a damaged newest checkpoint falls back to the one before."""
    directory = Path(directory)
    store = LocalStore(directory)
    tags, committed = list_checkpoint_tags(store)
    skipped = []
    for tag in reversed(tags):
        if tag not in committed:
            skipped.append(tag)
            continue
        c = read_marker(store, tag)
        problem = "its completion marker is unreadable" if c is None else verify_files(directory, c)
        if problem is None:
            if skipped:
                log(
                    f"checkpoint {directory}: newer tag(s) {', '.join(skipped)} are incomplete "
                    f"or damaged; resuming from {tag}"
                )
            return c
        log(f"checkpoint {directory / tag}: {problem}; trying an older checkpoint")
        skipped.append(tag)
    if committed:
        raise StorageError(
            f"{directory}: every committed checkpoint ({', '.join(sorted(committed))}) is "
            "damaged; restore one, or delete them to start the run afresh"
        )
    if skipped:
        log(f"checkpoint {directory}: only incomplete tags ({', '.join(skipped)}); starting afresh")
    return None


# ---------------------------------------------------------------- writing


def upload_checkpoint_files(
    local_dir: str | Path,
    remote_uri: str,
    tag: str,
    options: StorageOptions | dict | None = None,
    skip_same: bool = True,
) -> int:
    """Upload LOCAL_DIR/TAG/** to REMOTE/TAG/** (with `skip_same`, files already there whose
    size and recorded sha256 match are skipped). One process per node, each with the files its
    ranks wrote; then rank 0 calls `commit_checkpoint` once. Returns bytes uploaded."""
    local_dir = Path(local_dir)
    opts = _options(options)
    store = open_store(remote_uri, opts)
    root = local_dir / tag
    if not root.is_dir():
        raise StorageError(f"{root}: no such checkpoint directory to upload")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and not p.name.endswith((".tmp", CKPT_MARKER))
    )
    meter = _Meter(
        f"upload {join(remote_uri, tag)}", sum(p.stat().st_size for p in files), opts.verbose
    )

    def one(p: Path) -> int:
        rel = f"{tag}/{p.relative_to(root).as_posix()}"
        sha, size = sha256_file(p), p.stat().st_size
        try:
            if skip_same and store.size(rel) == size and store.metadata(rel).get("sha256") == sha:
                meter(size)
                return 0
        except NotFoundError as e:
            if "bucket does not exist" in str(e):
                raise
        store.put_file(rel, p, metadata={"sha256": sha})
        meter(size)
        return size

    with ThreadPoolExecutor(max_workers=max(1, min(4, opts.concurrency))) as pool:
        sent = sum(pool.map(one, files))
    meter.close()
    return sent


def uncommit(uri: str, tag: str, options: StorageOptions | dict | None = None) -> None:
    """Before a tag is written again (a resume that fell back past it): its old marker goes
    first, so the tag reads as incomplete until the new files are committed."""
    open_store(uri, options).delete([f"{tag}/{CKPT_MARKER}"])


def commit_checkpoint(
    uri: str, tag: str, keep: int | None = None, options: StorageOptions | dict | None = None
) -> list[str]:
    """Rank 0, once every node's files are in the store: write the marker listing them (the
    commit point), then `latest`, then prune to the newest `keep` committed tags. Returns the
    pruned tags."""
    if not is_tag(tag):
        raise StorageError(f"{tag!r} is not a checkpoint tag (step-NNNNNNNN)")
    store = open_store(uri, options)
    keys = [k for k in store.list(tag) if not k.endswith((CKPT_MARKER, ".tmp"))]
    if not keys:
        raise StorageError(f"{join(uri, tag)}: no checkpoint files were stored")
    files = {}
    for k in keys:
        sha = store.metadata(k).get("sha256", "")
        if not sha and isinstance(store, LocalStore):
            sha = sha256_file(store.root / k)
        files[k[len(tag) + 1 :]] = {"size": store.size(k), "sha256": sha}
    store.put_bytes(f"{tag}/{CKPT_MARKER}", Committed(tag, files).marker_json().encode())
    store.put_bytes(CKPT_LATEST, f"{tag}\n".encode())
    return prune_checkpoints(uri, keep, options) if keep else []


def prune_checkpoints(
    uri: str, keep: int, options: StorageOptions | dict | None = None
) -> list[str]:
    """Delete all but the newest `keep` committed `step-*` tags (the newest committed one always
    stays), and incomplete tags older than the oldest kept one (newer ones may be uploading).
    Nothing else under `uri` (export/, results, other prefixes) is touched."""
    store = open_store(uri, options)
    tags, committed = list_checkpoint_tags(store)
    done = [t for t in tags if t in committed]
    kept = set(done[-max(1, keep) :])
    oldest_kept = min(kept, key=step_of) if kept else None
    doomed = [
        t
        for t in tags
        if t not in kept
        and (t in committed or (oldest_kept is not None and step_of(t) < step_of(oldest_kept)))
    ]
    for t in doomed:
        keys = store.list(t)
        # the marker first, so a half-deleted tag never looks committed
        store.delete([k for k in keys if k.endswith(CKPT_MARKER)])
        store.delete([k for k in keys if not k.endswith(CKPT_MARKER)])
    return doomed


def sync_checkpoint_up(
    local_dir: str | Path,
    remote_uri: str,
    tag: str,
    keep: int | None = None,
    options: StorageOptions | dict | None = None,
) -> list[str]:
    """One node: upload LOCAL_DIR/TAG to REMOTE/TAG, then commit it (marker, `latest`, prune).
    When `remote_uri` is the local dir itself, the tag is committed in place."""
    if not _same_place(remote_uri, Path(local_dir)):
        upload_checkpoint_files(local_dir, remote_uri, tag, options)
    return commit_checkpoint(remote_uri, tag, keep, options)


# ---------------------------------------------------------------- reading


def fetch_checkpoint(
    remote_uri: str,
    local_dir: str | Path,
    tag: str | None = None,
    options: StorageOptions | dict | None = None,
) -> str | None:
    """Make LOCAL_DIR/TAG a verified copy of the committed REMOTE/TAG (by default the newest
    committed one): files already there that match the marker's size and sha256 are kept, the
    rest downloaded and verified; then the local marker and `latest` are written. Returns the
    tag, or None when the store holds no committed checkpoint. Whatever LOCAL_DIR's own
    `latest` says is ignored: it may name a step this node saved but never committed.
    One process per node: a file lock makes the others wait for its result."""
    local_dir = Path(local_dir)
    if _same_place(remote_uri, local_dir):
        found = newest_intact_local(local_dir)
        if tag is not None and (found is None or found.tag != tag):
            raise StorageError(f"{local_dir / tag}: not an intact committed checkpoint")
        return found.tag if found else None
    opts = _options(options)
    store = open_store(remote_uri, opts)
    with _node_lock(local_dir / ".diffar-fetch.lock", remote_uri):
        if tag is None:
            try:
                c = newest_committed(remote_uri, opts)
            except NotFoundError as e:
                if "bucket does not exist" in str(e):
                    raise
                return None
            if c is None:
                return None
        else:
            c = read_marker(store, tag)
            if c is None:
                raise StorageError(
                    f"{join(remote_uri, tag)}: not a committed checkpoint (no completion marker)"
                )
        total = sum(info["size"] for info in c.files.values())
        meter = _Meter(f"fetch {join(remote_uri, c.tag)}", total, opts.verbose)
        for rel, info in sorted(c.files.items()):
            dest = local_dir / c.tag / rel
            sha = info["sha256"] or None
            if (
                dest.is_file()
                and dest.stat().st_size == info["size"]
                and (sha is None or sha256_file(dest) == sha)
            ):
                meter(info["size"])
                continue
            store.get_file(f"{c.tag}/{rel}", dest, sha256=sha, size=info["size"], progress=meter)
        meter.close()
        write_local_commit(local_dir, c)
    return c.tag


def write_local_commit(local_dir: Path, c: Committed) -> None:
    """Mirror a commit into a node's local copy: the marker, then `latest`."""
    (local_dir / c.tag).mkdir(parents=True, exist_ok=True)
    marker = local_dir / c.tag / CKPT_MARKER
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(c.marker_json())
    os.replace(tmp, marker)
    pointer = local_dir / CKPT_LATEST
    tmp = pointer.with_name(pointer.name + ".tmp")
    tmp.write_text(f"{c.tag}\n")
    os.replace(tmp, pointer)


def prune_local_copy(local_dir: Path, committed: str, keep: int) -> list[str]:
    """A node's local copy of a remote run: keep the newest `keep` tags up to the committed one;
    older tags go. Tags after it (a save still under way) are left alone."""
    tags = [p.name for p in local_dir.iterdir() if p.is_dir() and is_tag(p.name)]
    upto = sorted((t for t in tags if step_of(t) <= step_of(committed)), key=step_of)
    doomed = upto[: max(0, len(upto) - max(1, keep))]
    for t in doomed:
        shutil.rmtree(local_dir / t, ignore_errors=True)
    return doomed


def fetch_latest_checkpoint(
    remote_uri: str, local_dir: str | Path, options: StorageOptions | dict | None = None
) -> str | None:
    """The newest committed checkpoint, fetched (see `fetch_checkpoint`)."""
    return fetch_checkpoint(remote_uri, local_dir, None, options)
