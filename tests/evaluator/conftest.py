"""Fixtures for the evaluator's tests: the helper module, and real Prometheus + Pushgateway.

The helper models live in evalhelpers.py beside this file; it is registered in sys.modules
(not put on sys.path, where another test folder's conftest could be shadowed).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

# The evaluator's unit tests run tiny tensors: one intra-op thread. More only oversubscribes the
# cores (on a shared 2-core machine a test took minutes instead of a second).
torch.set_num_threads(1)

_spec = importlib.util.spec_from_file_location(
    "evalhelpers", Path(__file__).with_name("evalhelpers.py")
)
evalhelpers = importlib.util.module_from_spec(_spec)
sys.modules["evalhelpers"] = evalhelpers
_spec.loader.exec_module(evalhelpers)


@pytest.fixture(scope="session")
def prometheus_stack(tmp_path_factory):
    """Real prometheus-pushgateway and prometheus on free loopback ports, scraping every 1s."""
    from testsupport.servers import prometheus_stack as stack

    with stack(tmp_path_factory.mktemp("prometheus")) as running:
        yield running
