"""The sampler's batches on the training device, one step ahead.

On CUDA each batch is gathered on the host, pinned and copied on a side stream while the
previous step runs: a copy from pageable memory would make the host wait for the GPU's queue
before it can launch the next step's kernels. The main stream waits only for its own batch's
copy (an event), never for the host. Elsewhere the batch is used where it is.

The sampler runs one batch ahead of training, so the position to checkpoint, and the epoch to
report, are the prefetcher's (after the last batch handed out), not the sampler's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffar.trainer.sampler import EpochSampler


@dataclass
class _Ahead:
    batch: torch.Tensor
    ready: torch.cuda.Event | None  # recorded after the copy, on CUDA


class DevicePrefetcher:
    def __init__(self, sampler: EpochSampler, device: torch.device):
        self.sampler, self.device = sampler, device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._position = sampler.state_dict()
        self._ahead = self._fetch()

    def _fetch(self) -> _Ahead:
        host = self.sampler.next_batch()
        if self._stream is None:
            return _Ahead(host.to(self.device), None)
        host = host.pin_memory()
        with torch.cuda.stream(self._stream):
            batch = host.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        return _Ahead(batch, ready)

    def next_batch(self) -> torch.Tensor:
        """This rank's slice of the next global batch, on the device."""
        current = self._ahead
        self._position = self.sampler.state_dict()
        self._ahead = self._fetch()
        if current.ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(current.ready)
            # Made on the side stream, used on this one: keep the allocator from reusing it early.
            current.batch.record_stream(stream)
        return current.batch

    @property
    def epoch(self) -> float:
        """Epochs consumed by the batches handed out so far."""
        return self._position["consumed"] / self.sampler.n

    def state_dict(self) -> dict:
        """The sampler's state just after the last batch handed out: what a resume replays from."""
        return dict(self._position)
