"""Precision on a machine without CUDA: the environment check is a pure function of the recipe and
the machine's facts (``World.cpu_bf16``: which kernels run bf16 matmuls), and the fact itself is a
pure function of the CPU's flags and ``ONEDNN_MAX_CPU_ISA``."""

from __future__ import annotations

import pytest

from rmrun.recipe import World, environment_problems
from rmrun.recipe.plugins import CPU_BF16_KERNELS, cpu_precision_note
from rmrun.recipe.schema import DataSection, ModelSection, PluginSection, Recipe
from rmrun.runtime.machine import cpu_bf16_kernels

AVX512 = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
SAPPHIRE_RAPIDS = AVX512 | {"avx512_bf16", "amx_tile", "amx_bf16"}
ZEN4 = AVX512 | {"avx512_bf16"}
SKYLAKE = AVX512
HASWELL = {"avx", "avx2", "fma"}

BF16_REFUSAL = (
    '[plugin].mixed_precision: "bf16" on this CPU: torch has no oneDNN bf16 kernels without AVX512 '
    '(avx512f/bw/vl/dq in /proc/cpuinfo) and its fallback is ~20x slower than fp32; use "fp32"'
)
FP16_REFUSAL = (
    '[plugin].mixed_precision: "fp16" needs CUDA (its dynamic loss scale is torch\'s CUDA AMP); '
    'use "bf16" or "fp32" on CPU'
)


def recipe(precision: str, *, name: str = "ddp") -> Recipe:
    return Recipe(
        data=DataSection(train=("x.jsonl",)),
        model=ModelSection(pretrain="m"),
        plugin=PluginSection(name=name, mixed_precision=precision),
    )


@pytest.mark.parametrize("kernels", sorted(CPU_BF16_KERNELS))
def test_ddp_in_bf16_runs_on_a_cpu_with_oneDNN_bf16_kernels(kernels):
    assert environment_problems(recipe("bf16"), World(size=2, cuda=False, cpu_bf16=kernels)) == []


def test_ddp_in_bf16_is_refused_on_a_cpu_where_torch_has_no_bf16_kernels():
    assert environment_problems(recipe("bf16"), World(size=1, cuda=False, cpu_bf16=None)) == [BF16_REFUSAL]
    assert environment_problems(recipe("bf16"), World(size=1, cuda=True, cpu_bf16=None)) == []
    assert environment_problems(recipe("fp32"), World(size=1, cuda=False, cpu_bf16=None)) == []


@pytest.mark.parametrize("kernels", [None, *sorted(CPU_BF16_KERNELS)])
def test_ddp_in_fp16_on_a_cpu_is_refused_whatever_its_kernels(kernels):
    assert environment_problems(recipe("fp16"), World(size=1, cuda=False, cpu_bf16=kernels)) == [FP16_REFUSAL]
    assert environment_problems(recipe("fp16"), World(size=1, cuda=True)) == []


def test_a_cuda_plugin_on_a_cpu_is_refused_for_the_plugin_not_its_precision():
    assert environment_problems(recipe("bf16", name="zero2"), World(size=1, cuda=False, cpu_bf16="amx_bf16")) == [
        '[plugin].name: "zero2" needs CUDA GPUs and this machine has none; use name = "ddp" on CPU'
    ]


@pytest.mark.parametrize(
    "kernels, note",
    [
        ("amx_bf16", "bf16 autocast on CPU: oneDNN with AMX (amx_bf16); weights, gradients and the optimizer in fp32"),
        (
            "avx512_bf16",
            "bf16 autocast on CPU: oneDNN with AVX512-BF16 (avx512_bf16); weights, gradients and the optimizer in fp32",
        ),
        (
            "avx512",
            "bf16 autocast on CPU: oneDNN on AVX512 without bf16 matrix units (no amx_bf16 or avx512_bf16): "
            "expect no speed-up over fp32; weights, gradients and the optimizer in fp32",
        ),
    ],
)
def test_the_note_says_which_kernels_run(kernels, note):
    assert cpu_precision_note(PluginSection(mixed_precision="bf16"), cpu_bf16=kernels) == note


def test_no_note_where_rmrun_does_not_autocast():
    assert cpu_precision_note(PluginSection(mixed_precision="fp32"), cpu_bf16="amx_bf16") is None
    assert cpu_precision_note(PluginSection(name="zero2", mixed_precision="bf16"), cpu_bf16="amx_bf16") is None
    assert cpu_precision_note(PluginSection(mixed_precision="bf16"), cpu_bf16=None) is None


@pytest.mark.parametrize(
    "flags, max_isa, kernels",
    [
        (SAPPHIRE_RAPIDS, "", "amx_bf16"),
        (ZEN4, "", "avx512_bf16"),
        (SKYLAKE, "", "avx512"),
        (HASWELL, "", None),
        (HASWELL | {"avx512_bf16"}, "", None),  # a bf16 flag without AVX512's core is not enough
        (set(), "", None),  # /proc/cpuinfo unreadable
        # ONEDNN_MAX_CPU_ISA caps what oneDNN (and torch's bf16 check) uses
        (SAPPHIRE_RAPIDS, "AVX512_CORE_BF16", "avx512_bf16"),
        (SAPPHIRE_RAPIDS, "avx512_core", "avx512"),
        (ZEN4, "AVX2", None),
        (ZEN4, "ALL", "avx512_bf16"),
        (ZEN4, "DEFAULT", "avx512_bf16"),
    ],
)
def test_the_cpu_bf16_kernels_come_from_its_flags_and_the_oneDNN_cap(flags, max_isa, kernels):
    assert cpu_bf16_kernels(flags, max_isa=max_isa) == kernels


def test_the_machine_fact_names_only_kernels_the_check_knows():
    seen = {
        cpu_bf16_kernels(flags, max_isa=isa)
        for flags in (SAPPHIRE_RAPIDS, ZEN4, SKYLAKE, HASWELL)
        for isa in ("", "AVX2", "AVX512_CORE", "AVX512_CORE_BF16", "AVX512_CORE_AMX")
    }
    assert seen == {None, *CPU_BF16_KERNELS}


def test_the_forward_context_autocasts_on_the_cpu():
    import torch

    from rmrun.model.boost import Boosted

    boosted = Boosted(
        booster=None,
        plugin=None,
        model=None,
        optimizer=None,
        scheduler=None,
        sharded=False,
        clips_itself=False,
        autocast=torch.bfloat16,
        autocast_device="cpu",
    )
    weight = torch.ones(4, 4)
    with boosted.forward_context():
        assert torch.is_autocast_cpu_enabled()
        out = torch.nn.functional.linear(torch.ones(2, 4), weight)
    assert out.dtype == torch.bfloat16 and weight.dtype == torch.float32
    with Boosted(**{**boosted.__dict__, "autocast": None}).forward_context():
        assert torch.nn.functional.linear(torch.ones(2, 4), weight).dtype == torch.float32
