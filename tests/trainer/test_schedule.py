import pytest

from diffar.trainer.config import OptimConfig
from diffar.trainer.schedule import lr_at


def test_warmup_then_cosine_to_min_lr():
    o = OptimConfig(lr=2e-4, min_lr=2e-5)
    assert lr_at(0, o, 10, 1000) == pytest.approx(2e-5)
    assert lr_at(9, o, 10, 1000) == pytest.approx(2e-4)
    assert lr_at(10, o, 10, 1000) == pytest.approx(2e-4)
    assert lr_at(505, o, 10, 1000) == pytest.approx((2e-4 + 2e-5) / 2)
    assert lr_at(1000, o, 10, 1000) == pytest.approx(2e-5)
    assert lr_at(5000, o, 10, 1000) == pytest.approx(2e-5)


def test_no_warmup():
    o = OptimConfig(lr=1.0, min_lr=0.0)
    assert lr_at(0, o, 0, 100) == pytest.approx(1.0)
