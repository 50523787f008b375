"""Process-group start and the process's place in it.

This is the one module that reads RANK / WORLD_SIZE / LOCAL_RANK and the node
layout torchrun gives (GROUP_RANK: which node, LOCAL_WORLD_SIZE: processes on it). ``world_from_env``
is cheap (no torch) for ``rmrun check``; ``start`` initialises torch.distributed
as ColossalAI's launch does, with the recipe's collective timeout, standalone (world size
1, a free port chosen by the OS) or under torchrun.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

from rmrun.recipe.schema import RunSection
from rmrun.recipe.validate import World


def _cuda_driver_present() -> bool:
    """A torch-free guess at CUDA, good enough for ``rmrun check``."""
    return os.path.exists("/proc/driver/nvidia/version") and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != ""


def world_from_env() -> World:
    from rmrun.runtime.machine import cpu_bf16_kernels

    return World(size=int(os.environ.get("WORLD_SIZE", "1")), cuda=_cuda_driver_present(), cpu_bf16=cpu_bf16_kernels())


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    local_rank: int
    cuda: bool
    node: int = 0  # processes with the same node share node-local scratch
    is_node_leader: bool = True  # the one process of its node that reads shared state into that scratch
    local_world_size: int = 1  # processes on this node, which share its cores

    def cores(self) -> int:
        """The cores this process may use: the node's (its CPU affinity), shared among its processes."""
        return max(1, len(os.sched_getaffinity(0)) // max(1, self.local_world_size))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def world(self) -> World:
        from rmrun.runtime.machine import cpu_bf16_kernels

        return World(size=self.world_size, cuda=self.cuda, cpu_bf16=cpu_bf16_kernels())


def free_port() -> int:
    """A TCP port on loopback the OS says is free now (the launcher, rmrun bench and the benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*, seed: int, collective_timeout_minutes: float = RunSection.collective_timeout_minutes) -> Rank:
    """Initialise the default process group (gloo on CPU, nccl on CUDA), its collectives
    timing out after ``collective_timeout_minutes`` (``run.collective_timeout_minutes``)."""
    from rmrun.runtime.process import configure_process

    configure_process()  # before torch's first computation: MKL reads its mode once
    import torch

    if "RANK" not in os.environ:
        os.environ.update(
            {
                "RANK": "0",
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "1",
                "LOCAL_WORLD_SIZE": "1",
                "GROUP_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port()),
            }
        )
    cuda = torch.cuda.is_available()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    _launch(seed=seed, local_rank=local_rank, timeout=datetime.timedelta(minutes=collective_timeout_minutes))
    node, leader = _node_place(rank, local_rank)
    return Rank(
        rank=rank,
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=local_rank,
        cuda=cuda,
        node=node,
        is_node_leader=leader,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


def _launch(*, seed: int, local_rank: int, timeout: datetime.timedelta) -> None:
    """What ``colossalai.launch_from_torch`` does (ColossalAI 0.5.0, which pyproject pins),
    with the timeout it does not take: its ``init_process_group`` leaves torch's default (10
    minutes for NCCL, 30 for gloo), shorter than a rank-0-only phase (tokenizing a large data
    set) that the other ranks wait out in a barrier, and a second ``init_process_group`` is
    refused, so the group cannot be made first and handed to it."""
    import torch
    import torch.distributed as tdist
    from colossalai.accelerator import get_accelerator  # importing colossalai sets CUDA_DEVICE_MAX_CONNECTIONS
    from colossalai.utils import set_seed

    accelerator = get_accelerator()
    # env://: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, as torchrun (or start) sets them.
    tdist.init_process_group(backend=accelerator.communication_backend, init_method="env://", timeout=timeout)
    if accelerator.support_set_device:
        accelerator.set_device(local_rank)
    set_seed(seed)
    torch._dynamo.config.optimize_ddp = tdist.get_world_size() > 1


def _node_place(rank: int, local_rank: int) -> tuple[int, bool]:
    """(which node this process is on, whether it is the node's local rank 0), from the
    launcher's variables, never from the host name (simulated nodes on one machine share
    it). A launcher that gives neither GROUP_RANK nor LOCAL_WORLD_SIZE makes every process
    its own node: each reads its own copy of the state, correct if not frugal."""
    if "GROUP_RANK" in os.environ and "LOCAL_RANK" in os.environ:
        return int(os.environ["GROUP_RANK"]), local_rank == 0
    if "LOCAL_WORLD_SIZE" in os.environ:
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        return rank // per_node, rank % per_node == 0
    return rank, True


def stop() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
