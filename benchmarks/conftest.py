"""pytest wiring for the throughput benchmarks: worker pools, machine labels, skipped
benchmarks kept in the JSON (pytest-benchmark drops them otherwise), a stable order."""

from __future__ import annotations

import os
import time

import pytest

from benchmarks import machine, settings

_SKIPPED: list[dict] = []
_STARTED = time.time()
ORDER = ("test_tokenize", "test_train", "test_shared_prompt", "test_startup", "test_checkpoint_stall")


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-process gloo group, for benchmarks that wrap a model in DDP in this process."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    store = tmp_path_factory.mktemp("pg") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.originalname or item.name
        return ORDER.index(name) if name in ORDER else len(ORDER)

    items.sort(key=rank)  # stable: parametrisations keep their order


def pytest_runtest_logreport(report):
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append(
            {"name": report.nodeid.split("::")[-1], "nodeid": report.nodeid, "reason": reason.removeprefix("Skipped: ")}
        )


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["rmrun_bench"] = machine.info()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["rmrun_bench"] = {
        "machine": machine.info(),
        "smoke": settings.SMOKE,
        "threads_per_rank": settings.THREADS_PER_RANK,
        "batch_size": settings.BATCH_SIZE,
        "max_length": settings.MAX_LENGTH,
        "skipped": list(_SKIPPED),
        "pytest_seconds": time.time() - _STARTED,
        "note": os.environ.get("BENCH_NOTE", ""),  # what the numbers should be read with (a busy machine...)
    }


class Pools:
    """One :class:`~benchmarks.harness.WorkerPool` per process count, started on first use and
    closed at the end of the session (or rebuilt after a failed job)."""

    def __init__(self):
        self._pools = {}

    def get(self, nproc: int):
        from benchmarks.harness import WorkerPool

        pool = self._pools.get(nproc)
        if pool is None or not pool.procs:
            for other in [n for n in self._pools if n != nproc]:  # one pool alive at a time
                self._pools.pop(other).close()
            pool = self._pools[nproc] = WorkerPool(nproc, threads_per_rank=settings.THREADS_PER_RANK)
        return pool

    def close(self):
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


@pytest.fixture(scope="session")
def pools():
    p = Pools()
    yield p
    p.close()


@pytest.fixture(scope="session")
def cuda_available() -> int:
    """The number of CUDA GPUs (0: none); from nvidia-smi, so this process never initialises CUDA
    and the spawned workers get a clean CUDA state."""
    return len(machine.gpus())
