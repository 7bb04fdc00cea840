"""The s3:// backend of `diffar.trainer.storage`, on boto3 (AWS S3, MinIO, SeaweedFS, Ceph...).

Retries are diffar's own (botocore's are off), so every request is retried the same way and the
backoff is configurable: throttling (429, SlowDown), 5xx and dropped or refused connections are
retried up to `max_attempts` times with exponential backoff and jitter. A download that breaks
mid-stream resumes with a ranged GET from the bytes already written; the attempt budget is reset
whenever a try made progress. Errors the user must fix (missing bucket or key, access denied, no
credentials, an unreachable endpoint, a checksum mismatch) become one-line `StorageError`s that
name the s3:// URI and what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from diffar.trainer.storage import (
    ChecksumError,
    NotFoundError,
    StorageError,
    StorageOptions,
    Store,
    split_s3,
)

log = logging.getLogger("diffar.trainer.storage")

_RETRY_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "BadGateway",
    "GatewayTimeout",
    "PriorRequestNotComplete",
}
_RETRY_STATUS = {429, 500, 502, 503, 504}
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    bex.ConnectionError,  # EndpointConnectionError, connect timeouts, ...
    bex.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ...
    bex.ResponseStreamingError,
    bex.IncompleteReadError,
    http.client.IncompleteRead,
    ConnectionError,
    TimeoutError,
)
try:  # urllib3 raises these from a body read that the server cut
    import urllib3.exceptions as u3

    _STREAM_ERRORS += (u3.ProtocolError, u3.ReadTimeoutError, u3.IncompleteRead)
except ImportError:  # pragma: no cover
    pass

_CHUNK = 1 << 20
_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def _client(opts: StorageOptions):
    key = (
        opts.endpoint_url,
        opts.region,
        opts.profile,
        opts.addressing_style,
        opts.connect_timeout,
        opts.read_timeout,
        opts.concurrency,
        os.getpid(),
        _credential_fingerprint(),
    )
    with _clients_lock:
        c = _clients.get(key)
        if c is None:
            session = (
                boto3.session.Session(profile_name=opts.profile)
                if opts.profile
                else boto3.session.Session()
            )
            region = opts.region or session.region_name or "us-east-1"
            cfg = Config(
                retries={"total_max_attempts": 1, "mode": "standard"},  # ours, see _retry
                connect_timeout=opts.connect_timeout,
                read_timeout=opts.read_timeout,
                max_pool_connections=max(10, opts.concurrency * 2),
                s3={
                    "addressing_style": opts.addressing_style
                    or ("path" if opts.endpoint_url else "auto")
                },
                # S3-compatible stores differ in flexible-checksum support; diffar verifies
                # sha256 itself, so only send checksums where an operation requires them.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            c = session.client("s3", endpoint_url=opts.endpoint_url, region_name=region, config=cfg)
            _clients[key] = c
        return c


def _credential_fingerprint() -> str:
    """Clients are cached; a change of environment credentials must give a new client. Only a
    hash is kept, never the credentials."""
    env = os.environ
    raw = "\0".join(
        env.get(k, "")
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_ARN",
        )
    )
    return hashlib.sha256(raw.encode()).hexdigest()


def _status(e: BaseException) -> tuple[str, int]:
    if isinstance(e, bex.ClientError):
        err = e.response.get("Error", {})
        return str(err.get("Code", "")), int(
            e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        )
    return "", 0


def _retryable(e: BaseException) -> bool:
    if isinstance(e, bex.ClientError):
        code, status = _status(e)
        return code in _RETRY_CODES or status in _RETRY_STATUS
    return isinstance(e, _STREAM_ERRORS)


class S3Store(Store):
    def __init__(self, uri: str, options: StorageOptions):
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = split_s3(self.uri)
        self.opts = options
        try:
            self.client = _client(options)
        except bex.ProfileNotFound:
            raise StorageError(
                f"{self.uri}: AWS profile {options.profile!r} not found; fix AWS_PROFILE or "
                "~/.aws/config"
            ) from None
        except (ValueError, bex.BotoCoreError) as e:
            raise StorageError(
                f"{self.uri}: cannot set up the S3 client for endpoint "
                f"{options.endpoint_url or 'AWS'} ({str(e).splitlines()[0]}); check "
                "AWS_ENDPOINT_URL (e.g. http://host:9000)"
            ) from None

    # ------------------------------------------------------------ plumbing

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}".strip("/") if self.prefix else key.strip("/")

    def _backoff(self, attempt: int) -> float:
        base = min(self.opts.backoff_max, self.opts.backoff_base * (2 ** (attempt - 1)))
        return base * (0.5 + random.random() / 2)

    def _retry(self, what: str, key: str, fn: Callable):
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as e:
                if not _retryable(e) or attempt >= self.opts.max_attempts:
                    raise self._translate(e, key, what, attempt) from None
                delay = self._backoff(attempt)
                log.warning(
                    "s3 %s %s: %s; retry %d/%d in %.2f s",
                    what,
                    self.url(key),
                    _describe(e),
                    attempt,
                    self.opts.max_attempts - 1,
                    delay,
                )
                time.sleep(delay)

    def _translate(self, e: BaseException, key: str, what: str, attempts: int = 1) -> StorageError:
        url = self.url(key)
        code, status = _status(e)
        endpoint = self.opts.endpoint_url or "the AWS S3 endpoint"
        if isinstance(e, StorageError):
            return e
        if isinstance(e, bex.NoCredentialsError | bex.PartialCredentialsError):
            return StorageError(
                f"{url}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a web-identity role (IRSA)"
            )
        if isinstance(e, bex.ClientError):
            if code in ("403", "Forbidden") and what == "HEAD":
                code = self._error_code_of_get(key) or code  # a HEAD error has no body
            if code == "NoSuchBucket" or (
                code in ("404", "NotFound") and not self._bucket_exists()
            ):
                return NotFoundError(
                    f"s3://{self.bucket}: bucket does not exist (at {endpoint}); create it or fix "
                    "the bucket name in the URI"
                )
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFoundError(
                    f"{url}: object not found in bucket {self.bucket}; check the URI (or the "
                    "dataset/checkpoint was never written there)"
                )
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(
                    f"{url}: access denied ({code}): the credentials are not valid for "
                    f"{endpoint}; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
                )
            if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
                return StorageError(
                    f"{url}: access denied; grant these credentials s3:{_action(what)} on "
                    f"bucket {self.bucket} (IAM role or bucket policy)"
                )
            if status in _RETRY_STATUS or code in _RETRY_CODES:
                return StorageError(
                    f"{url}: the store kept failing ({_describe(e)}) after {attempts} attempts; "
                    "try again later or raise DIFFAR_S3_MAX_ATTEMPTS"
                )
            msg = str(e.response.get("Error", {}).get("Message", "")).splitlines()
            return StorageError(
                f"{url}: {what} failed: {code or status} {msg[0] if msg else ''}".rstrip()
            )
        if isinstance(e, bex.EndpointConnectionError | bex.ConnectTimeoutError) or (
            isinstance(e, _STREAM_ERRORS) and attempts >= self.opts.max_attempts
        ):
            return StorageError(
                f"{url}: cannot reach {_endpoint_phrase(self.opts.endpoint_url)} after {attempts} attempts "
                f"({_describe(e)}); check AWS_ENDPOINT_URL and that the store is up"
            )
        if isinstance(e, bex.ParamValidationError | bex.InvalidS3AddressingStyleError):
            return StorageError(f"{url}: invalid request ({e})")
        if isinstance(e, bex.BotoCoreError):
            return StorageError(f"{url}: {what} failed: {_describe(e)}")
        raise e

    def _error_code_of_get(self, key: str) -> str | None:
        try:
            self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range="bytes=0-0")
        except bex.ClientError as e:
            return _status(e)[0] or None
        except Exception:
            return None
        return None

    def _bucket_exists(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except bex.ClientError as e:
            return _status(e)[0] not in ("404", "NoSuchBucket", "NotFound")
        except Exception:
            return True

    # ------------------------------------------------------------ the Store interface

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
            return True
        except NotFoundError as e:
            if "bucket does not exist" in str(e):
                raise
            return False

    def _head(self, key: str) -> dict:
        return self._retry(
            "HEAD", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        )

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def metadata(self, key: str) -> dict:
        return dict(self._head(key).get("Metadata", {}))

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        if full and not full.endswith("/"):
            full += "/"
        keys: list[str] = []
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            resp = self._retry("LIST", prefix, lambda kw=kwargs: self.client.list_objects_v2(**kw))
            base = f"{self.prefix}/" if self.prefix else ""
            keys += [o["Key"][len(base) :] for o in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                break
            token = resp.get("NextContinuationToken")
        return sorted(keys)

    def get_bytes(self, key: str) -> bytes:
        def get():
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

        return self._retry("GET", key, get)

    def put_bytes(self, key: str, data: bytes, metadata: dict | None = None) -> None:
        self._retry(
            "PUT",
            key,
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, Metadata=metadata or {}
            ),
        )

    def put_file(self, key: str, path: Path, metadata: dict | None = None) -> None:
        """Upload a file: one PUT when small, else a parallel multipart upload."""
        path = Path(path)
        size = path.stat().st_size
        part = max(5 << 20, self.opts.part_size)
        if size <= part:
            self.put_bytes(key, path.read_bytes(), metadata)
            return
        k = self._key(key)
        upload = self._retry(
            "multipart upload",
            key,
            lambda: self.client.create_multipart_upload(
                Bucket=self.bucket, Key=k, Metadata=metadata or {}
            ),
        )
        upload_id = upload["UploadId"]
        ranges = [(i + 1, off, min(part, size - off)) for i, off in enumerate(range(0, size, part))]

        def send(n: int, off: int, length: int) -> dict:
            def once():
                with open(path, "rb") as f:
                    f.seek(off)
                    body = f.read(length)
                return self.client.upload_part(
                    Bucket=self.bucket, Key=k, UploadId=upload_id, PartNumber=n, Body=body
                )

            resp = self._retry(f"upload part {n}", key, once)
            return {"PartNumber": n, "ETag": resp["ETag"]}

        try:
            # uploads cost little CPU (no hashing here): parallel parts even on small machines
            with ThreadPoolExecutor(max_workers=max(4, self.opts.concurrency)) as pool:
                parts = list(pool.map(lambda r: send(*r), ranges))
            self._retry(
                "complete multipart upload",
                key,
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=k, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload_id)
            raise

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            if not batch:
                continue
            resp = self._retry(
                "DELETE",
                keys[i],
                lambda b=batch: self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}
                ),
            )
            for err in resp.get("Errors", []):
                raise StorageError(
                    f"s3://{self.bucket}/{err.get('Key')}: delete failed: {err.get('Code')} "
                    f"{err.get('Message', '')}".rstrip()
                )

    def sha256(self, key: str) -> str:
        h = hashlib.sha256()
        self._stream(key, 0, None, h.update)
        return h.hexdigest()

    # ------------------------------------------------------------ downloads

    def _stream(self, key: str, start: int, end: int | None, sink: Callable[[bytes], None]) -> int:
        """Feed the object's bytes [start, end) (end None: to the object's end) to `sink`,
        resuming with ranged GETs when the connection breaks; returns the end offset. The
        attempt budget resets whenever a try made progress."""
        pos = start
        attempt = 0
        k = self._key(key)
        while True:
            attempt += 1
            progressed = False
            try:
                kwargs = {"Bucket": self.bucket, "Key": k}
                if end is not None:
                    if pos >= end:
                        return pos
                    kwargs["Range"] = f"bytes={pos}-{end - 1}"
                elif pos:
                    kwargs["Range"] = f"bytes={pos}-"
                resp = self.client.get_object(**kwargs)
                body = resp["Body"]
                try:
                    for chunk in body.iter_chunks(_CHUNK):
                        sink(chunk)
                        pos += len(chunk)
                        progressed = True
                finally:
                    body.close()
                if end is not None and pos < end:
                    raise http.client.IncompleteRead(b"", end - pos)
                return pos
            except Exception as e:
                if isinstance(e, bex.ClientError) and _status(e)[1] == 416 and end is None:
                    return pos  # asked for bytes past the end: nothing was left to read
                if progressed:
                    attempt = 1
                if not _retryable(e) or attempt >= self.opts.max_attempts:
                    raise self._translate(e, key, "GET", attempt) from None
                delay = self._backoff(attempt)
                log.warning(
                    "s3 GET %s: %s at byte %d; resuming (retry %d/%d) in %.2f s",
                    self.url(key),
                    _describe(e),
                    pos,
                    attempt,
                    self.opts.max_attempts - 1,
                    delay,
                )
                time.sleep(delay)

    def get_file(self, key, dest, *, sha256=None, size=None, progress=None) -> None:
        """Download into DEST.part, verify the sha256, then rename into place.

        Objects of at least two `range_size` pieces are fetched as parallel ranged GETs
        (`concurrency` at a time) written in place, while the sha256 runs over the pieces in
        order; DEST.part.ranges records finished pieces so a later process resumes them.
        Smaller ones stream in one GET that resumes from the bytes already in DEST.part. A
        mismatch after a resume retries once from zero; a clean mismatch is a ChecksumError
        and leaves nothing behind."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        ranges = dest.with_name(dest.name + ".part.ranges")
        if size is None:
            size = self.size(key)
        piece = max(1 << 20, self.opts.range_size)
        parallel = self.opts.concurrency > 1 and size >= 2 * piece
        for fresh in (False, True):
            if parallel:
                digest, resumed = self._fetch_parallel(
                    key, part, ranges, size, piece, progress, fresh
                )
            else:
                ranges.unlink(missing_ok=True)
                digest, resumed = self._fetch_serial(key, part, size, progress, fresh)
            if sha256 is None or digest == sha256:
                os.replace(part, dest)
                ranges.unlink(missing_ok=True)
                return
            if not resumed:
                break  # a clean full download that does not match: the object is bad
        part.unlink(missing_ok=True)
        ranges.unlink(missing_ok=True)
        raise ChecksumError(
            f"{self.url(key)}: sha256 does not match the manifest (corrupted shard); nothing was "
            "cached; re-upload it or re-run `diffar data prepare --overwrite`"
        )

    def _fetch_serial(self, key, part: Path, size: int, progress, fresh: bool) -> tuple[str, bool]:
        h = hashlib.sha256()
        if fresh:
            part.unlink(missing_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have:
            with open(part, "rb") as f:
                while block := f.read(4 << 20):
                    h.update(block)
            if progress:
                progress(have)
        # The sha256 runs in a second thread, a chunk behind the network reads, so hashing
        # overlaps the transfer instead of adding to it (hashlib releases the GIL).
        chunks: queue.Queue = queue.Queue(maxsize=8)

        def hasher() -> None:
            while (b := chunks.get()) is not None:
                h.update(b)

        worker = threading.Thread(target=hasher, name="diffar-sha256", daemon=True)
        worker.start()
        try:
            with open(part, "ab") as f:

                def sink(b: bytes) -> None:
                    f.write(b)
                    chunks.put(b)
                    if progress:
                        progress(len(b))

                self._stream(key, have, size, sink)
        finally:
            chunks.put(None)
            worker.join()
        return h.hexdigest(), have > 0

    def _fetch_parallel(
        self, key, part: Path, ranges: Path, size: int, piece: int, progress, fresh: bool
    ) -> tuple[str, bool]:
        offsets = list(range(0, size, piece))
        done: set[int] = set()
        if not fresh and part.exists() and ranges.exists() and part.stat().st_size == size:
            with contextlib.suppress(ValueError):
                done = {int(x) for x in ranges.read_text().split()}
        else:
            part.unlink(missing_ok=True)
            ranges.unlink(missing_ok=True)
        lock = threading.Lock()
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        log_f = open(ranges, "a")  # noqa: SIM115 - closed below, shared by the workers
        pool = ThreadPoolExecutor(self.opts.concurrency, thread_name_prefix="diffar-get")
        try:
            os.ftruncate(fd, size)

            def fetch(i: int) -> list[bytes]:
                off = offsets[i]
                chunks: list[bytes] = []
                at = off

                def sink(b: bytes) -> None:
                    nonlocal at
                    os.pwrite(fd, b, at)  # in place as it arrives; kept for the hash
                    at += len(b)
                    chunks.append(b)
                    if progress:
                        progress(len(b))

                self._stream(key, off, min(size, off + piece), sink)
                with lock:
                    log_f.write(f"{i}\n")
                    log_f.flush()
                return chunks

            h = hashlib.sha256()
            window = self.opts.concurrency + 2  # pieces in memory at most: bounded
            pending = {}
            submitted = 0
            for i, off in enumerate(offsets):
                while submitted < len(offsets) and submitted < i + window:
                    if submitted not in done:
                        pending[submitted] = pool.submit(fetch, submitted)
                    submitted += 1
                if i in done:
                    bufs = [os.pread(fd, min(piece, size - off), off)]
                    if progress:
                        progress(len(bufs[0]))
                else:
                    bufs = pending.pop(i).result()
                for b in bufs:  # in order, while the pool fetches the next pieces
                    h.update(b)
                del bufs
            return h.hexdigest(), bool(done)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            os.close(fd)
            log_f.close()


def _describe(e: BaseException) -> str:
    code, status = _status(e)
    if code and not code.isdigit():
        return code
    if status:
        return f"HTTP {status}"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _action(what: str) -> str:
    w = what.upper()
    if w.startswith(("GET", "HEAD")):
        return "GetObject"
    if w.startswith("LIST"):
        return "ListBucket"
    if w.startswith("DELETE"):
        return "DeleteObject"
    return "PutObject"


def _endpoint_phrase(endpoint_url: str | None) -> str:
    """`the S3 endpoint http://host:9000`, or AWS's (not "the S3 endpoint the AWS S3 endpoint")."""
    return f"the S3 endpoint {endpoint_url}" if endpoint_url else "the AWS S3 endpoint"
