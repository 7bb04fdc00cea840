"""Without SeaweedFS the S3 tests fail; they never skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_s3_tests_fail_without_weed(tmp_path):
    here = Path(__file__).parent
    env = {**os.environ, "DIFFAR_WEED": str(tmp_path / "no-weed")}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(here / "test_s3_checkpoints.py"), "-k", "sync_up_prune"],
        capture_output=True, text=True, env=env, cwd=here.parent.parent, timeout=300,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "is not an executable SeaweedFS `weed`" in out
    assert "1 error" in out and "skipped" not in out
