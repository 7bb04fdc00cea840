import numpy as np
import pytest

from diffar.trainer.plan import sequences_per_epoch, total_steps
from diffar.trainer.sampler import EpochSampler


def _tokens(n=1001):
    return np.arange(n, dtype=np.int64)


def test_windows_overlap_by_one_token():
    s = EpochSampler(_tokens(), seq_len=10, global_batch=4, seed=0)
    starts = s.next_batch()[:, 0].numpy()
    for row in s.next_batch().numpy():
        assert row.tolist() == list(range(row[0], row[0] + 11))
    assert all(st % 10 == 0 for st in starts)


def test_each_epoch_visits_every_window_once_in_a_fresh_order():
    n = sequences_per_epoch(1001, 10)
    assert n == 100
    s = EpochSampler(_tokens(), seq_len=10, global_batch=20, seed=3)
    epochs = [np.concatenate([s.next_batch()[:, 0].numpy() for _ in range(5)]) for _ in range(2)]
    for e in epochs:
        assert sorted(e.tolist()) == list(range(0, 1000, 10))
    assert epochs[0].tolist() != epochs[1].tolist()


def test_ranks_take_disjoint_slices_of_the_same_global_batch():
    whole = EpochSampler(_tokens(), seq_len=10, global_batch=8, seed=5).next_batch()
    parts = [EpochSampler(_tokens(), 10, 8, 5, rank=r, world_size=2).next_batch() for r in range(2)]
    assert np.array_equal(np.concatenate(parts), whole.numpy())


def test_resume_at_exact_position():
    a = EpochSampler(_tokens(), seq_len=10, global_batch=6, seed=9)
    for _ in range(23):  # crosses an epoch boundary (100 windows / 6 per step)
        a.next_batch()
    b = EpochSampler(_tokens(), seq_len=10, global_batch=6, seed=9)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.next_batch().numpy(), b.next_batch().numpy())
    assert a.epoch == pytest.approx(24 * 6 / 100)


def test_resume_refuses_other_dataset():
    a = EpochSampler(_tokens(), seq_len=10, global_batch=6, seed=9)
    b = EpochSampler(_tokens(2001), seq_len=10, global_batch=6, seed=9)
    with pytest.raises(ValueError, match="another dataset"):
        b.load_state_dict(a.state_dict())


def test_total_steps_follow_from_u_e_batch_and_l():
    # The paper's 100M-token AR run: 99,952,399 tokens, L=2048, batch 256, 50 epochs.
    assert sequences_per_epoch(99_952_399, 2048) == 48_804
    assert total_steps(99_952_399, 50, 2048, 256) == 9_532
