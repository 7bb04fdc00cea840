"""Where datasets and checkpoints live: local paths / file:// URIs, and s3:// (any S3-compatible store).

One small interface, `Store`, over a root URI; keys are '/'-separated paths below the root.

    store = open_store("s3://bucket/datasets/c4-100m")      # or "/data/c4", "file:///data/c4"
    store.put_file("train/shard-00000.bin", local_path)
    store.get_bytes("train/manifest.json")

What the rest of diffar calls (none of it needs to know about S3):

    resolve_dataset(uri, cache_dir, ...) -> Path      a local dataset dir (fetched + verified)
    dataset_writer(uri) -> DatasetWriter              shards then manifest, last
    read_manifest_uri(uri) -> Manifest
    verify_dataset(uri) -> list of problems

Checkpoints use this interface through the commit protocol in checkpoint_store.py.

S3 settings come the way AWS users expect: boto3's standard credential chain (environment,
shared profile / AWS_PROFILE, web identity / IRSA, instance metadata), `AWS_ENDPOINT_URL`
(or `AWS_ENDPOINT_URL_S3`) for S3-compatible stores, `AWS_REGION` / `AWS_DEFAULT_REGION`, and
`DIFFAR_S3_ADDRESSING_STYLE` (path | virtual | auto). `StorageOptions` sets the same in code.
Credentials are never logged or written anywhere by diffar.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from diffar.trainer.errors import UserError
from diffar.trainer.shards import (
    MANIFEST,
    DatasetError,
    Manifest,
    ShardInfo,
    read_manifest,
    sha256_file,
    write_manifest,
    write_shard,
)

TOKENIZER_FILE = "tokenizer.json"


class StorageError(UserError):
    """A storage operation that failed in a way the user can fix; one line, naming the URI."""


class NotFoundError(StorageError):
    """The bucket, key or file does not exist."""


class ChecksumError(StorageError):
    """Downloaded bytes do not match the sha256 the manifest (or object metadata) promises."""


# ---------------------------------------------------------------- URIs


def is_remote(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI or local path with '/'."""
    out = str(uri).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def local_path(uri: str | Path) -> Path:
    """A plain path or file:// URI as a Path."""
    s = str(uri)
    if s.startswith("file://"):
        parsed = urlparse(s)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{s}: file:// URIs name a local path (file:///abs/path)")
        return Path(unquote(parsed.path))
    if "://" in s:
        scheme = s.split("://", 1)[0]
        raise StorageError(
            f"{s}: unsupported storage scheme {scheme!r}; use a path, file:// or s3://"
        )
    return Path(s)


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    rest = str(uri)[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: an s3 URI needs a bucket, e.g. s3://my-bucket/datasets/c4")
    return bucket, prefix.strip("/")


# ---------------------------------------------------------------- options


def _default_concurrency() -> int:
    return min(8, max(1, (os.cpu_count() or 1) // 4))


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise StorageError(f"{name}={os.environ[name]!r} is not a number") from None


@dataclass(frozen=True)
class StorageOptions:
    """S3 client settings; None means boto3's own resolution (environment, profile, IMDS...)."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: str | None = None  # "path", "virtual" or "auto"
    max_attempts: int = 8  # per request, for throttling, 5xx and dropped connections
    backoff_base: float = 0.25  # seconds; doubles each attempt, with jitter
    backoff_max: float = 8.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    part_size: int = 16 << 20  # multipart upload part size
    range_size: int = 16 << 20  # parallel ranged-GET piece size (objects of 2+ pieces)
    # Parallel parts per object (multipart upload, ranged GETs). They pay off against real S3
    # (one stream there gives 50-100 MB/s) but need spare cores: with few CPUs one stream with
    # overlapped hashing is faster, so the default scales with the machine.
    concurrency: int = field(default_factory=lambda: _default_concurrency())
    verbose: bool = True  # progress and throughput lines on stderr

    @classmethod
    def from_env(cls, **overrides) -> StorageOptions:
        env = os.environ
        values = dict(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            profile=env.get("AWS_PROFILE") or None,
            addressing_style=env.get("DIFFAR_S3_ADDRESSING_STYLE") or None,
            max_attempts=int(_env_float("DIFFAR_S3_MAX_ATTEMPTS", cls.max_attempts)),
            backoff_base=_env_float("DIFFAR_S3_BACKOFF", cls.backoff_base),
            backoff_max=_env_float("DIFFAR_S3_BACKOFF_MAX", cls.backoff_max),
            connect_timeout=_env_float("DIFFAR_S3_CONNECT_TIMEOUT", cls.connect_timeout),
            read_timeout=_env_float("DIFFAR_S3_READ_TIMEOUT", cls.read_timeout),
            concurrency=max(1, int(_env_float("DIFFAR_S3_CONCURRENCY", _default_concurrency()))),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _options(options: StorageOptions | dict | None) -> StorageOptions:
    if isinstance(options, StorageOptions):
        return options
    return StorageOptions.from_env(**(options or {}))


# ---------------------------------------------------------------- the interface


class Store:
    """Objects under one root URI. Keys are relative, '/'-separated."""

    uri: str

    def url(self, key: str = "") -> str:
        return join(self.uri, key)

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def size(self, key: str) -> int:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (recursive), relative to the root, sorted."""
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes, metadata: dict | None = None) -> None:
        raise NotImplementedError

    def put_file(self, key: str, path: Path, metadata: dict | None = None) -> None:
        raise NotImplementedError

    def get_file(
        self,
        key: str,
        dest: Path,
        *,
        sha256: str | None = None,
        size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Download to `dest` atomically (temp file, then rename), verifying `sha256` if given."""
        raise NotImplementedError

    def metadata(self, key: str) -> dict:
        return {}

    def delete(self, keys: list[str]) -> None:
        raise NotImplementedError


class LocalStore(Store):
    def __init__(self, root: str | Path):
        self.root = local_path(root)
        self.uri = str(root).rstrip("/") or "/"

    def _p(self, key: str) -> Path:
        return self.root / key if key else self.root

    def exists(self, key: str) -> bool:
        return self._p(key).exists()

    def size(self, key: str) -> int:
        try:
            return self._p(key).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"{self._p(key)}: no such file") from None

    def list(self, prefix: str = "") -> list[str]:
        base = self._p(prefix)
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)).replace(os.sep, "/")
            for p in base.rglob("*")
            if p.is_file()
        )

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._p(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self._p(key)}: no such file") from None

    def put_bytes(self, key: str, data: bytes, metadata: dict | None = None) -> None:
        dest = self._p(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def put_file(self, key: str, path: Path, metadata: dict | None = None) -> None:
        dest = self._p(key)
        if Path(path).resolve() == dest.resolve():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def get_file(self, key, dest, *, sha256=None, size=None, progress=None) -> None:
        src = self._p(key)
        if not src.is_file():
            raise NotFoundError(f"{src}: no such file")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(src, tmp)
        if sha256 is not None and sha256_file(tmp) != sha256:
            tmp.unlink(missing_ok=True)
            raise ChecksumError(
                f"{src}: sha256 does not match the manifest (corrupted file); nothing was cached"
            )
        os.replace(tmp, dest)
        if progress:
            progress(dest.stat().st_size)

    def delete(self, keys: list[str]) -> None:
        for k in keys:
            p = self._p(k)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            # like an object store, leave no empty folders behind
            parent = p.parent
            while parent != self.root and self.root in parent.parents:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent


def open_store(uri: str | Path, options: StorageOptions | dict | None = None) -> Store:
    """The store for a root URI: s3://bucket/prefix, file:///path or a plain path."""
    if is_remote(uri):
        from diffar.trainer.storage_s3 import S3Store

        return S3Store(str(uri), _options(options))
    return LocalStore(uri)


# ---------------------------------------------------------------- progress lines


def _human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} B"


class _Meter:
    """Bytes/s reporting: a tqdm bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled
        self.done = 0
        self.start = self.last = time.monotonic()
        self.lock = threading.Lock()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr)

    def __call__(self, n: int) -> None:
        with self.lock:
            self.done += n
            if self.bar is not None:
                self.bar.update(n)
            elif self.enabled and time.monotonic() - self.last >= 5.0:
                self.last = time.monotonic()
                self._line()

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.start, 1e-9)

    def _line(self, final: bool = False) -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        secs = time.monotonic() - self.start
        print(
            f"{self.label}: {_human(self.done)}/{_human(self.total)} ({pct:.0f}%) "
            f"in {secs:.1f} s, {self.rate() / 1e6:,.1f} MB/s{' done' if final else ''}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.enabled:
            self._line(final=True)


# ---------------------------------------------------------------- writing datasets


class DatasetWriter:
    """Writes one dataset: shards (in any order, uploads in parallel), then the manifest, last.

    A dataset without manifest.json is incomplete, so readers never see a half-written one.
    """

    def __init__(self, uri: str, options: StorageOptions | dict | None = None):
        self.uri = str(uri).rstrip("/")
        self.remote = is_remote(self.uri)
        self.store = open_store(self.uri, options)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._staging: Path | None = None

    def begin(self, overwrite: bool = False) -> None:
        if self.store.exists(MANIFEST) and not overwrite:
            raise StorageError(
                f"{self.store.url(MANIFEST)} already exists; pass --overwrite to replace the "
                "dataset, or choose another --out"
            )
        # Manifest first, so the dataset reads as incomplete while it is rewritten.
        old = self.store.list("")
        if MANIFEST in old:
            self.store.delete([MANIFEST])
        self.store.delete([k for k in old if k != MANIFEST and "/" not in k])
        if self.remote:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="diffar-upload")
            self._staging = Path(tempfile.mkdtemp(prefix="diffar-prepare-"))
        else:
            self.store.root.mkdir(parents=True, exist_ok=True)

    def put_shard(self, name: str, tokens: np.ndarray) -> ShardInfo:
        if not self.remote:
            return write_shard(self.store.root / name, tokens, str(tokens.dtype))
        assert self._staging is not None and self._pool is not None
        # At most two uploads in flight: bounded local disk, and tokenizing goes on meanwhile.
        self._drain(limit=2)
        info = write_shard(self._staging / name, tokens, str(tokens.dtype))
        self._pending.append(self._pool.submit(self._upload, name))
        return info

    def _drain(self, limit: int) -> None:
        """Wait until fewer than `limit` uploads are in flight; an upload's error raises here."""
        while True:
            for f in [f for f in self._pending if f.done()]:
                f.result()
                self._pending.remove(f)
            if len(self._pending) < limit:
                return
            wait(self._pending, return_when=FIRST_COMPLETED)

    def _upload(self, name: str) -> None:
        assert self._staging is not None
        path = self._staging / name
        self.store.put_file(name, path)
        path.unlink(missing_ok=True)

    def finish(self, manifest: Manifest) -> None:
        try:
            self._drain(limit=1)
        finally:
            self._close()
        if self.remote:
            self.store.put_bytes(MANIFEST, manifest.to_json().encode())
        else:
            write_manifest(self.store.root, manifest)

    def abort(self) -> None:
        for f in self._pending:
            f.cancel()
        self._close()

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def dataset_writer(uri: str, options: StorageOptions | dict | None = None) -> DatasetWriter:
    return DatasetWriter(uri, options)


# ---------------------------------------------------------------- reading datasets


def read_manifest_uri(uri: str | Path, options: StorageOptions | dict | None = None) -> Manifest:
    """The manifest of the dataset at `uri` (path, file:// or s3://)."""
    if not is_remote(uri):
        return read_manifest(local_path(uri))
    store = open_store(uri, options)
    try:
        text = store.get_bytes(MANIFEST).decode("utf-8", errors="replace")
    except NotFoundError:
        raise DatasetError(
            f"{store.url(MANIFEST)}: no manifest; prepare the dataset with "
            f"`diffar data prepare ... --out` (or it is incomplete)"
        ) from None
    return Manifest.from_json(text, where=store.url(MANIFEST))


def verify_dataset(uri: str | Path, options: StorageOptions | dict | None = None) -> list[str]:
    """Every shard's size and sha256 checked against the manifest; returns the problems found."""
    manifest = read_manifest_uri(uri, options)
    itemsize = np.dtype(manifest.dtype).itemsize
    problems: list[str] = []
    if is_remote(uri):
        store = open_store(uri, options)
        for shard in manifest.shards:
            try:
                h = store.sha256(shard.name)  # type: ignore[attr-defined]
            except NotFoundError:
                problems.append(f"{store.url(shard.name)}: missing")
                continue
            if h != shard.sha256:
                problems.append(f"{store.url(shard.name)}: sha256 mismatch (corrupted shard)")
    else:
        root = local_path(uri)
        for shard in manifest.shards:
            p = root / shard.name
            if not p.is_file():
                problems.append(f"{p}: missing")
            elif p.stat().st_size != shard.tokens * itemsize:
                problems.append(f"{p}: size {p.stat().st_size} != {shard.tokens * itemsize}")
            elif sha256_file(p) != shard.sha256:
                problems.append(f"{p}: sha256 mismatch (corrupted shard)")
    if sum(s.tokens for s in manifest.shards) != manifest.total_tokens:
        problems.append(f"{uri}: manifest total_tokens disagrees with its shards' token counts")
    return problems


def _cache_dir_for(uri: str, cache_dir: str | Path) -> Path:
    bucket, prefix = split_s3(uri)
    return Path(cache_dir) / "s3" / bucket / prefix


def _sidecar_ok(path: Path, sha: str) -> bool:
    """A cached file is trusted when its .sha256 sidecar (written after verification) matches."""
    side = path.with_name(path.name + ".sha256")
    try:
        recorded, size, mtime = side.read_text().split()
        st = path.stat()
    except (OSError, ValueError):
        return False
    return recorded == sha and int(size) == st.st_size and int(mtime) == st.st_mtime_ns


def _write_sidecar(path: Path, sha: str) -> None:
    st = path.stat()
    side = path.with_name(path.name + ".sha256")
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(f"{sha} {st.st_size} {st.st_mtime_ns}\n")
    os.replace(tmp, side)


@contextlib.contextmanager
def _node_lock(path: Path, what: str) -> Iterator[None]:
    """One process per node does the work; the others wait here and then reuse its result."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        print(
            f"{what}: another process on this node is fetching it; waiting ({path})",
            file=sys.stderr,
            flush=True,
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def resolve_dataset(
    uri: str | Path,
    cache_dir: str | Path = ".diffar-cache",
    *,
    unique_tokens: int | None = None,
    tokenizer: str | None = None,
    vocab_size: int | None = None,
    eod_id: int | None = None,
    options: StorageOptions | dict | None = None,
) -> Path:
    """A local dataset directory for `uri`, ready for `shards.load_tokens`.

    Plain paths and file:// URIs are returned as they are (after the checks below). For s3://,
    the manifest and the shards holding the first `unique_tokens` tokens (all when None) are
    fetched into `cache_dir/s3/BUCKET/PREFIX/`, each verified against the manifest's sha256 and
    renamed into place only then; files already there and valid are reused. All ranks on a node
    may call this at once: a file lock makes one of them download and the others wait.

    `tokenizer`, `vocab_size`, `eod_id` and `unique_tokens`, when given, are checked against the
    manifest (a one-line DatasetError on mismatch).
    """
    uri = str(uri).rstrip("/") or str(uri)
    if not is_remote(uri):
        path = local_path(uri)
        manifest = read_manifest(path)
        _check_manifest(manifest, uri, unique_tokens, tokenizer, vocab_size, eod_id)
        return path

    opts = _options(options)
    store = open_store(uri, opts)
    dest = _cache_dir_for(uri, cache_dir)
    with _node_lock(dest / ".lock", uri):
        manifest = read_manifest_uri(uri, opts)
        _check_manifest(manifest, uri, unique_tokens, tokenizer, vocab_size, eod_id)
        want = manifest.total_tokens if unique_tokens is None else unique_tokens
        needed, have = [], 0
        for shard in manifest.shards:
            if have >= want:
                break
            needed.append(shard)
            have += shard.tokens
        itemsize = np.dtype(manifest.dtype).itemsize
        dest.mkdir(parents=True, exist_ok=True)
        # An old manifest that disagrees must not describe new shards: drop it first.
        cached_manifest = dest / MANIFEST
        if cached_manifest.exists() and cached_manifest.read_text() != manifest.to_json():
            cached_manifest.unlink()
        todo = [s for s in needed if not _sidecar_ok(dest / s.name, s.sha256)]
        total = sum(s.tokens * itemsize for s in todo)
        if todo:
            meter = _Meter(f"fetch {uri}", total, opts.verbose)
            for shard in todo:
                path = dest / shard.name
                path.with_name(path.name + ".sha256").unlink(missing_ok=True)
                store.get_file(
                    shard.name,
                    path,
                    sha256=shard.sha256,
                    size=shard.tokens * itemsize,
                    progress=meter,
                )
                _write_sidecar(path, shard.sha256)
            meter.close()
        if manifest.tokenizer != "gpt2" and not (dest / TOKENIZER_FILE).exists():
            # a trained tokenizer travels with its dataset (see `diffar data prepare --tokenizer`)
            with contextlib.suppress(NotFoundError):
                store.get_file(TOKENIZER_FILE, dest / TOKENIZER_FILE)
        if not cached_manifest.exists():
            write_manifest(dest, manifest)
    return dest


def _check_manifest(
    manifest: Manifest,
    uri: str,
    unique_tokens: int | None,
    tokenizer: str | None,
    vocab_size: int | None,
    eod_id: int | None,
) -> None:
    if tokenizer is not None and manifest.tokenizer != tokenizer:
        raise DatasetError(
            f"{uri}: dataset tokenizer {manifest.tokenizer!r} does not match the run's "
            f"{tokenizer!r}; prepare the data with the run's tokenizer or fix the config"
        )
    if vocab_size is not None and manifest.vocab_size != vocab_size:
        raise DatasetError(
            f"{uri}: dataset vocab_size {manifest.vocab_size} does not match the run's "
            f"model.vocab_size {vocab_size}; fix model.vocab_size or re-prepare the data"
        )
    if eod_id is not None and manifest.eod_id != eod_id:
        raise DatasetError(
            f"{uri}: dataset EOD id {manifest.eod_id} does not match the run's {eod_id}"
        )
    if unique_tokens is not None and unique_tokens > manifest.total_tokens:
        raise DatasetError(
            f"{uri}: asked for {unique_tokens:,} unique tokens but the dataset holds "
            f"{manifest.total_tokens:,}; lower data.unique_tokens or prepare more data"
        )


def inspect_datasets(
    uri: str | Path,
    verify: bool = False,
    as_json: bool = False,
    options: StorageOptions | dict | None = None,
) -> tuple[str, bool]:
    """`diffar data inspect`: the summary of a dataset, or of a prepare root's train/ and val/."""
    import json

    uri = str(uri).rstrip("/") or str(uri)
    store = open_store(uri, options)
    if store.exists(MANIFEST):
        targets = [("", uri)]
    else:
        targets = [(n, join(uri, n)) for n in ("train", "val") if store.exists(f"{n}/{MANIFEST}")]
        if not targets:
            read_manifest_uri(uri, options)  # raises the one-line "no manifest" error
    lines: list[str] = []
    docs: dict[str, dict] = {}
    ok = True
    for name, target in targets:
        m = read_manifest_uri(target, options)
        if as_json:
            docs[name or "dataset"] = json.loads(m.to_json())
        else:
            unique = m.source.get("unique_tokens") if isinstance(m.source, dict) else None
            lines += [
                f"{target}",
                f"  tokens        {m.total_tokens:,}"
                + (f" (unique tokens asked: {unique:,})" if unique else ""),
                f"  documents     {m.documents:,}",
                f"  shards        {len(m.shards)} ({m.dtype})",
                f"  tokenizer     {m.tokenizer} (vocab {m.vocab_size}, EOD {m.eod_id})",
            ]
            if isinstance(m.source, dict) and m.source.get("split"):
                lines.append(f"  split         {m.source['split']}")
        if verify:
            problems = verify_dataset(target, options)
            ok = ok and not problems
            verdict = "ok" if not problems else f"{len(problems)} problem(s)"
            if as_json:
                docs[name or "dataset"]["verify"] = problems
            else:
                lines.append(f"  verify        {verdict}: every shard's sha256 checked")
                lines += [f"    {p}" for p in problems]
    if as_json:
        return json.dumps(docs if len(targets) > 1 else next(iter(docs.values())), indent=2), ok
    return "\n".join(lines), ok
