"""Data-parallel runs under torchrun, and the device option (docs/DESIGN.md, "Data-parallel training").

A process started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR`` in its
environment, ``WORLD_SIZE`` > 1) joins a process group: gloo on a CPU, nccl on a GPU. Without those
variables (or with a world of 1) nothing is initialised and every helper here is a no-op, so a single
process runs exactly as it always did.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import DataError

log = logging.getLogger("dgmrec.distributed")

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
CPU = torch.device("cpu")


def resolve_device(spec: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """The torch device an option value names; 'auto' is CUDA (GPU ``local_rank``) when available, else CPU.

    Refuses (``DataError``) an unknown value, or CUDA on a machine without it."""
    if isinstance(spec, torch.device):
        return spec
    text = str(spec).strip().lower()
    if not _DEVICE.match(text):
        raise DataError(None, f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}", field="--device")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DataError(None, f"device {spec!r}: no CUDA GPU is available here (use 'cpu' or 'auto')",
                            field="--device")
        index = int(text.split(":")[1]) if ":" in text else local_rank % torch.cuda.device_count()
        return torch.device("cuda", index)
    return torch.device("cpu")


@dataclass(frozen=True)
class Context:
    """This process's place in the run: ``rank`` of ``world`` processes, on ``device``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = CPU

    @property
    def distributed(self) -> bool:
        """More than one process, joined in a process group."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, metrics and logs."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows (the first ``n % world`` ranks get one more)."""
        return shard_of(n, self.rank, self.world)


def shard_of(n: int, rank: int, world: int) -> slice:
    """Rows [start, stop) of ``n`` rows split into ``world`` contiguous shards as equal as possible."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def launched_world() -> int:
    """WORLD_SIZE set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: str | torch.device = "auto") -> Context:
    """This process's Context; under torchrun with WORLD_SIZE > 1, joins (once) the default process group.

    The backend is nccl when the device is a GPU, gloo otherwise."""
    world = launched_world()
    if world <= 1:
        return Context(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    where = resolve_device(device, local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if not dist.is_initialized():
        backend = "nccl" if where.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        if rank == 0:  # rank 0 alone logs
            log.info("data-parallel: %d processes (%s; rank 0 on %s)", world, backend, where)
    return Context(rank=rank, world=world, local_rank=local_rank, device=where)


def shutdown(*, together: bool = True) -> None:
    """Leave the process group, if this process joined one. ``together`` (the normal end of a run): after a
    barrier, so that no rank tears its connections down while another is still leaving; False after an
    error, when the other ranks may be waiting in another collective."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_object(ctx: Context, value: Any, src: int = 0) -> Any:
    """``value`` of rank ``src``, on every rank (picklable objects)."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]


def gather_objects(ctx: Context, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not ctx.distributed:
        return [value]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, value)
    return out


def sync_torch_rng(ctx: Context) -> None:
    """Give every rank rank 0's torch random state (CPU, and the GPU's when training on one), so that
    the whole-catalog work of an epoch draws the same numbers everywhere and the models stay equal."""
    if not ctx.distributed:
        return
    state = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None
    state, cuda = broadcast_object(ctx, (state, cuda))
    torch.set_rng_state(state)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, ctx.device)


def broadcast_tensors(ctx: Context, tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s, in place."""
    if not ctx.distributed:
        return
    for t in tensors:
        dist.broadcast(t.data, src=src)


def average_gradients(ctx: Context, params: list[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the ranks (one flat all_reduce).

    A parameter some batch rows did not reach has no gradient on some ranks: those count as zeros, and
    the parameter keeps no gradient only where no rank has one (as one process over the whole batch)."""
    if not ctx.distributed or not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    if not live:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in live])
    dist.all_reduce(flat)
    flat /= ctx.world
    start = 0
    for p in live:
        n = p.numel()
        p.grad = flat[start:start + n].view_as(p).clone()
        start += n


def ranks_agree(ctx: Context, tensors: list[torch.Tensor]) -> bool:
    """Whether every rank holds the same ``tensors`` (compared by a float64 sum of each; True alone)."""
    if not ctx.distributed:
        return True
    sums = [float(t.detach().double().sum()) for t in tensors]
    return all(other == sums for other in gather_objects(ctx, sums))
