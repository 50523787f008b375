"""Process-group start and the process's place in it.

This is the one module that reads RANK / WORLD_SIZE / LOCAL_RANK. ``world_from_env``
is cheap (no torch) for ``rmrun check``; ``start`` initialises torch.distributed
through ColossalAI, standalone (world size 1, a free port chosen by the OS) or under
torchrun.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from rmrun.recipe.validate import World


def _cuda_driver_present() -> bool:
    """A torch-free guess at CUDA, good enough for ``rmrun check``."""
    return os.path.exists("/proc/driver/nvidia/version") and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != ""


def world_from_env() -> World:
    return World(size=int(os.environ.get("WORLD_SIZE", "1")), cuda=_cuda_driver_present())


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    local_rank: int
    cuda: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def world(self) -> World:
        return World(size=self.world_size, cuda=self.cuda)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*, seed: int) -> Rank:
    """Initialise the default process group (gloo on CPU, nccl on CUDA)."""
    import torch

    if "RANK" not in os.environ:
        os.environ.update(
            {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(_free_port())}
        )
    cuda = torch.cuda.is_available()
    import colossalai

    colossalai.launch_from_torch(backend="nccl" if cuda else "gloo", seed=seed, verbose=False)
    return Rank(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        cuda=cuda,
    )


def stop() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
