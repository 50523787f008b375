"""Small collectives over the default process group; no-ops when it is not started."""

from __future__ import annotations


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _device(dist):
    import torch

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


def broadcast(value, *, src: int = 0):
    """Rank ``src``'s value on every rank (small Python objects only)."""
    dist = _dist()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_all(value) -> list:
    dist = _dist()
    if dist is None:
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def any_flag(*flags: bool) -> list[bool]:
    """Element-wise OR over all ranks of a few booleans, in one collective."""
    import torch

    dist = _dist()
    if dist is None:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=_device(dist))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def sum_tensor(t, *, group=None):
    dist = _dist()
    if dist is None:
        return t
    on_device = t.to(_device(dist))
    dist.all_reduce(on_device, group=group)
    return on_device.to(t.device)
