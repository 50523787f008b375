"""``rmrun bench``: the sweep grammar (typed by the schema), combinations that cannot run here,
the summary and ranking from given step records. The sweeps themselves run in
tests/e2e/test_bench_cli.py."""

from __future__ import annotations

import pytest

from rmrun.bench.bench import BenchError, check_combinations, check_sweeps, expand, parse_sweeps, split_values
from rmrun.bench.report import combination_summary, recommendation
from rmrun.cli.main import main
from rmrun.recipe import RecipeError, World
from tests.helpers import QUICKSTART

CPU = World(size=1, cuda=False)


def combos_for(*sweeps: str, sets=(), world=CPU):
    parsed = parse_sweeps(list(sweeps))
    check_sweeps(QUICKSTART, parsed, sets=list(sets))
    combos = expand(QUICKSTART, parsed, sets=list(sets), scratch="/tmp/never-used")
    check_combinations(QUICKSTART, combos, world=world)
    return combos


# ------------------------------------------------------------------ grammar


def test_values_split_at_top_level_commas_only():
    assert split_values("8,32") == ["8", "32"]
    assert split_values('["q_proj","v_proj"],["o_proj"], "a,b"') == ['["q_proj","v_proj"]', '["o_proj"]', '"a,b"']


@pytest.mark.parametrize(
    "text, message",
    [
        ("plugin.name", "expected KEY=V1,V2"),
        ("=ddp", "expected KEY=V1,V2"),
        ("plugin.name=ddp,,zero2", "expected KEY=V1,V2"),
        ("schedule.batch_size=8,8", "a value is repeated"),
    ],
)
def test_malformed_sweeps_are_one_line_errors(text, message):
    with pytest.raises(BenchError, match=message):
        parse_sweeps([text])


def test_a_key_swept_twice_is_refused():
    with pytest.raises(BenchError, match="swept twice"):
        parse_sweeps(["schedule.batch_size=8", "schedule.batch_size=16"])


def test_every_combination_is_typed_by_the_schema():
    combos = combos_for("schedule.batch_size=8,32", "plugin.grad_checkpoint=false,true")
    assert [c.label for c in combos] == [
        "schedule.batch_size=8 plugin.grad_checkpoint=false",
        "schedule.batch_size=8 plugin.grad_checkpoint=true",
        "schedule.batch_size=32 plugin.grad_checkpoint=false",
        "schedule.batch_size=32 plugin.grad_checkpoint=true",
    ]
    assert [(c.recipe.schedule.batch_size, c.recipe.plugin.grad_checkpoint) for c in combos] == [
        (8, False),
        (8, True),
        (32, False),
        (32, True),
    ]
    assert all(c.status == "runnable" for c in combos)


def test_set_applies_to_every_combination_and_the_state_goes_to_scratch():
    combos = combos_for("schedule.batch_size=8,32", sets=["schedule.lr=1e-4"])
    assert {c.recipe.schedule.lr for c in combos} == {1e-4}
    assert {c.recipe.state_url for c in combos} == {"/tmp/never-used/state"}


def test_lora_is_swept_on_and_off():
    combos = combos_for("model.lora=false,true")
    assert combos[0].recipe.model.lora is None
    assert combos[1].recipe.model.lora is not None and combos[1].recipe.model.lora.r == 8
    # off wins over a LoRA table that --set (or the recipe) gave; on keeps its keys
    combos = combos_for("model.lora=false,true", sets=["model.lora.r=4"])
    assert combos[0].recipe.model.lora is None
    assert combos[1].recipe.model.lora.r == 4


def test_an_unknown_key_gets_the_did_you_mean_error():
    with pytest.raises(RecipeError) as e:
        combos_for("schedule.batchsize=8,32")
    assert len(e.value.problems) == 1  # once, not once per combination
    assert e.value.problems[0].endswith(
        '--sweep schedule.batchsize=8,32: unknown key schedule.batchsize (did you mean "batch_size"?)'
    )


def test_a_badly_typed_value_is_a_usage_error():
    with pytest.raises(RecipeError) as e:
        combos_for("schedule.batch_size=8,many")
    assert len(e.value.problems) == 1
    assert "[schedule].batch_size" in e.value.problems[0] and "many" in e.value.problems[0]


def test_cuda_plugins_are_skipped_here_with_the_reason():
    combos = combos_for("plugin.name=ddp,zero2,gemini")
    assert [c.status for c in combos] == ["runnable", "skipped", "skipped"]
    assert combos[1].reason.startswith('needs CUDA: [plugin].name: "zero2" needs CUDA GPUs')
    # gemini in fp32 is also invalid; on this machine the missing GPU comes first.
    assert combos[2].reason.startswith('needs CUDA: [plugin].name: "gemini" needs CUDA GPUs')
    assert combos[2].reason.endswith(
        '(and elsewhere: [plugin].mixed_precision: plugin "gemini" trains in "bf16" or "fp16", not "fp32")'
    )


def test_bf16_is_swept_on_a_cpu_with_oneDNN_bf16_kernels_and_skipped_without():
    combos = combos_for("plugin.mixed_precision=fp32,bf16,fp16", world=World(size=1, cuda=False, cpu_bf16="amx_bf16"))
    assert [c.status for c in combos] == ["runnable", "runnable", "skipped"]
    assert combos[2].reason.startswith('needs CUDA: [plugin].mixed_precision: "fp16" needs CUDA')
    combos = combos_for("plugin.mixed_precision=fp32,bf16", world=CPU)  # no oneDNN bf16 kernels
    assert [c.status for c in combos] == ["runnable", "skipped"]
    assert combos[1].reason.startswith('[plugin].mixed_precision: "bf16" on this CPU: torch has no oneDNN bf16')


def test_an_invalid_combination_is_reported_with_its_one_line_message():
    combos = combos_for("plugin.name=ddp,gemini", world=World(size=1, cuda=True))
    assert combos[0].status == "runnable"
    assert combos[1].status == "invalid"
    assert combos[1].reason == '[plugin].mixed_precision: plugin "gemini" trains in "bf16" or "fp16", not "fp32"'


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sweep", "schedule.batchsize=8,32"], 'unknown key schedule.batchsize (did you mean "batch_size"?)'),
        (["--sweep", "plugin.name"], "expected KEY=V1,V2"),
        (["--steps", "0"], "must be at least 1"),
    ],
)
def test_cli_usage_errors_exit_2_in_one_line(capsys, argv, message):
    assert main(["bench", QUICKSTART, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert all(line.startswith("rmrun: ") for line in err.strip().splitlines())


# ------------------------------------------------------------------ report


def _fake_round(seconds: list[float], *, pairs=8, tokens=800, padded=1000):
    records = [{"seconds": s, "pairs": pairs, "tokens": tokens, "padded": padded} for s in seconds]
    return [
        {
            "status": "ok",
            "records": records,
            "peak_rss_mib": 500.0,
            "first_step_s": 3.0,
            "num_params": 1000,
            "checkpoint": {"save_seconds": [0.2], "load_seconds": [0.1], "bytes": 10},
        }
    ]


def test_summary_and_ranking_from_given_step_records():
    fast = combination_summary([_fake_round([1.0, 1.0]), _fake_round([1.0, 2.0])], peak_flops=None)
    assert fast["timed_steps"] == 4
    assert fast["pairs_per_second"]["median"] == 8.0
    assert fast["overall_pairs_per_second"] == 32 / 5
    assert fast["padding_fraction"] == pytest.approx(0.2)
    assert fast["checkpoint"] == {"save_s": 0.2, "load_s": 0.1, "bytes": 10}
    assert fast["mfu"] is None
    slow = combination_summary([_fake_round([2.0, 2.0])], peak_flops=1e9)
    assert slow["mfu"] == pytest.approx(6 * 1000 * 400 / 1e9)
    ranked = [{"label": "a", "summary": fast}, {"label": "b", "summary": slow}]
    text = recommendation(ranked)
    assert text.startswith("fastest that fits: a (8.0 pairs/s); runner-up: b (4.0 pairs/s, 50% slower")
    assert recommendation([]).startswith("no combination ran")
