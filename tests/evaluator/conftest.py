"""Fixtures for the evaluator's tests; the helper models live in evalhelpers.py beside this."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
