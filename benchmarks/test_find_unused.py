"""What DDP's ``find_unused_parameters=True`` costs per optimizer step: the quickstart's
model (tiny Llama, fp32, CPU, one process) wrapped in DDP both ways, stepped side by side.

Both copies start from the same weights and take the same batch (16 pairs, 96 tokens a side:
32 rows), one step each per round, the order alternating every round; round 0 is a warm-up.
With the flag on, DDP walks the autograd graph after every forward to find parameters that
will get no gradient; rmrun's plan turns it on only where a model has some
(``rmrun.recipe.plan.find_unused``). Results: ``benchmarks/results/find-unused-<machine>.md``.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks import machine, settings

VARIANTS = (False, True)
ROWS, LENGTH = 32, 96
ROUNDS = 2 if settings.SMOKE else 60


def _wrapped(find_unused: bool):
    from rmrun.model.model import build_reward_model, load_tokenizer
    from rmrun.recipe import load_recipe
    from tests.helpers import QUICKSTART

    model = load_recipe(QUICKSTART).model
    net = build_reward_model(model, tokenizer=load_tokenizer(model), seed=0)
    ddp = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=find_unused, broadcast_buffers=False)
    return ddp, torch.optim.AdamW(ddp.parameters(), lr=1e-4)


def _step(ddp, optimizer, input_ids) -> float:
    start = time.perf_counter()
    logits = ddp(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits
    rewards = logits[:, 0]  # the model pools at the last token itself
    loss = -torch.nn.functional.logsigmoid(rewards[0::2] - rewards[1::2]).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def test_find_unused(benchmark, process_group):
    torch.set_num_threads(settings.THREADS_PER_RANK)
    models = {flag: _wrapped(flag) for flag in VARIANTS}
    input_ids = torch.randint(4, 1000, (ROWS, LENGTH), generator=torch.Generator().manual_seed(0))
    times: dict[bool, list[float]] = {flag: [] for flag in VARIANTS}

    def rounds():
        for index in range(ROUNDS + 1):
            for flag in VARIANTS if index % 2 == 0 else VARIANTS[::-1]:
                seconds = _step(*models[flag], input_ids)
                if index > 0:
                    times[flag].append(seconds)

    benchmark.pedantic(rounds, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.group = "find_unused"
    summary = {
        f"find_unused_{str(flag).lower()}": {
            "median_ms": 1000 * statistics.median(times[flag]),
            "mean_ms": 1000 * statistics.fmean(times[flag]),
            "min_ms": 1000 * min(times[flag]),
            "step_seconds": times[flag],
        }
        for flag in VARIANTS
    }
    ratio = summary["find_unused_true"]["median_ms"] / summary["find_unused_false"]["median_ms"]
    benchmark.extra_info.update(
        {
            "kind": "find_unused",
            "machine": machine.label(),
            "cpu": machine.cpu_model(),
            "threads": settings.THREADS_PER_RANK,
            "rounds": ROUNDS,
            "rows": ROWS,
            "length": LENGTH,
            "true_over_false_median": ratio,
            **summary,
        }
    )
    assert len(times[True]) == len(times[False]) == ROUNDS
