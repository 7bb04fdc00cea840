"""Shared by every test folder: `testsupport` (real servers for integration tests) on sys.path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
