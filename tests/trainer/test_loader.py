"""The device prefetcher runs the sampler one batch ahead, but reports and checkpoints the
position of the batches it has handed out."""

import numpy as np
import torch

from diffar.trainer.loader import DevicePrefetcher
from diffar.trainer.sampler import EpochSampler

CPU = torch.device("cpu")


def _sampler(**kw) -> EpochSampler:
    return EpochSampler(np.arange(1001, dtype=np.int64), seq_len=10, global_batch=6, seed=9, **kw)


def test_hands_out_the_samplers_batches_in_order():
    plain, prefetched = _sampler(), DevicePrefetcher(_sampler(), CPU)
    for _ in range(40):  # 100 windows per epoch: crosses two epoch boundaries
        assert torch.equal(prefetched.next_batch(), plain.next_batch())


def test_position_and_epoch_are_those_of_the_batches_handed_out():
    plain, prefetched = _sampler(), DevicePrefetcher(_sampler(), CPU)
    assert prefetched.state_dict() == plain.state_dict() and prefetched.epoch == 0.0
    for _ in range(17):
        prefetched.next_batch()
        plain.next_batch()
        assert prefetched.state_dict() == plain.state_dict()
        assert prefetched.epoch == plain.epoch
    # The sampler underneath is a batch further on.
    assert prefetched.sampler.consumed == plain.consumed + 6


def test_resuming_from_its_state_replays_the_uninterrupted_run():
    run = DevicePrefetcher(_sampler(rank=1, world_size=2), CPU)
    for _ in range(23):
        run.next_batch()
    saved = run.state_dict()
    expected = [run.next_batch() for _ in range(5)]
    restarted = _sampler(rank=1, world_size=2)
    restarted.load_state_dict(saved)
    resumed = DevicePrefetcher(restarted, CPU)
    for want in expected:
        assert torch.equal(resumed.next_batch(), want)
