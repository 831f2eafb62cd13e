"""Where pruning runs: the device, and the process group when started by ``torchrun``.

``torchrun --nproc_per_node N -m compiler prune ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`runtime` then joins the process group (NCCL on CUDA, Gloo on the CPU)
and leaves it afterwards. Without those variables everything runs in this one process.

Gradients are combined by :func:`ordered_sum_hook`, a DistributedDataParallel communication
hook that gathers every rank's gradient and adds them up in rank order. Together with the
trainer's fixed micro-batches (see :mod:`compiler.prune.train`) this makes a run on ``W``
processes compute exactly what one process computes with the same seed.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from core.errors import InputError

__all__ = ["Runtime", "DEVICES", "torchrun_env", "resolve_device", "runtime", "ordered_sum_hook",
           "wrap_ddp"]

#: Values of ``--device``.
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Runtime:
    """The device this process trains on and its place in the process group."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process prints and writes files."""
        return self.rank == 0


def torchrun_env(environ=None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when started by torchrun, else None."""
    environ = os.environ if environ is None else environ
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(n in environ for n in names):
        return None
    try:
        rank, world, local = (int(environ[n]) for n in names)
    except ValueError:
        raise InputError(f"RANK/WORLD_SIZE/LOCAL_RANK must be whole numbers, not "
                         f"{[environ[n] for n in names]}; start with torchrun or unset "
                         f"them") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InputError(f"inconsistent torchrun variables RANK={rank} WORLD_SIZE={world} "
                         f"LOCAL_RANK={local}; start with torchrun or unset them")
    return rank, world, local


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when a GPU is present, else the CPU."""
    if name not in DEVICES:
        raise InputError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    has_cuda = torch.cuda.is_available()
    if name == "cuda" and not has_cuda:
        build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
        raise InputError(f"--device cuda asked for, but CUDA is not available (torch "
                         f"{torch.__version__}, {build}); use --device cpu or --device auto")
    if name == "cpu" or (name == "auto" and not has_cuda):
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise InputError(f"LOCAL_RANK {local_rank} but only {count} CUDA device(s); start at "
                         f"most {count} processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


@contextmanager
def runtime(device: str = "auto"):
    """Yield the :class:`Runtime`; inside torchrun, join (and then leave) the process group."""
    env = torchrun_env()
    if env is None:
        yield Runtime(device=resolve_device(device))
        return
    rank, world, local = env
    dev = resolve_device(device, local)
    started = False
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        started = True
    try:
        yield Runtime(device=dev, rank=rank, world_size=world, local_rank=local)
    finally:
        if started:
            dist.destroy_process_group()


def ordered_sum_hook(process_group, bucket):
    """DDP communication hook: the sum of all ranks' gradients, added in rank order.

    All-reduce leaves the order of the additions to the backend (a ring, a tree); gathering
    and adding in a fixed order gives the same bits on every rank and for every backend. The
    trainer scales each micro-batch loss by the global batch size, so the sum is the mean
    gradient; DDP's own division by the world size is not wanted (a hook replaces it).
    """
    group = process_group if process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    buffer = bucket.buffer()
    gathered = torch.empty(world * buffer.numel(), dtype=buffer.dtype, device=buffer.device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    work = gather(gathered, buffer.reshape(-1), group=group, async_op=True)

    def add_in_order(_):
        parts = gathered.view(world, *buffer.shape)
        total = parts[0].clone()
        for r in range(1, world):
            total += parts[r]
        return total

    return work.get_future().then(add_in_order)


def wrap_ddp(model: torch.nn.Module, device: torch.device):
    """``model`` in DistributedDataParallel with :func:`ordered_sum_hook`, buffers left alone
    (they are identical on every rank and BatchNorm statistics are frozen)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    params = inspect.signature(DDP.__init__).parameters
    quiet = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else \
        {"broadcast_buffers": False}
    net = DDP(model, device_ids=[device] if device.type == "cuda" else None, **quiet)
    net.register_comm_hook(None, ordered_sum_hook)
    return net
