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


def _attention_inputs(mixed: bool):
    import torch

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 48, 32, generator=generator) for _ in range(3))
    mask = torch.ones(48, 48, dtype=torch.bool).tril().expand(2, 1, 48, 48).clone()
    mask[0, :, :, 30:] = False  # a padded row
    mask[..., 0] = True
    # Llama's rotary embedding (fp32 cos/sin) promotes queries and keys to fp32; values stay bf16
    low = (2,) if mixed else (0, 1, 2)
    q, k, v = ((t.bfloat16() if i in low else t).requires_grad_() for i, t in enumerate((q, k, v)))
    return q, k, v, mask


@pytest.mark.parametrize("mixed", [False, True], ids=["all-bf16", "fp32-queries-and-keys"])
def test_attention_under_cpu_autocast_runs_in_fp32(mixed):
    """Under rmrun's CPU autocast SDPA computes in fp32 (torch 2.5's CPU flash kernel is slower in
    bf16 and in mixed dtypes) and hands back bf16; gradients reach the inputs in their own dtypes.
    Negative control: torch's autocast alone runs the bf16 kernel, which rounds differently."""
    import torch
    import torch.nn.functional as F

    from rmrun.model.boost import autocast_context

    q, k, v, mask = _attention_inputs(mixed)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).bfloat16()
    with autocast_context(torch.bfloat16, device="cpu"):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)
    out.float().sum().backward()
    assert [t.grad.dtype for t in (q, k, v)] == [t.dtype for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert not torch.equal(plain.to(expected.dtype), expected)


def test_attention_of_fp32_inputs_under_cpu_autocast_runs_in_fp32_too():
    import torch
    import torch.nn.functional as F

    from rmrun.model.boost import autocast_context

    q, k, v, mask = (t.detach().float() for t in _attention_inputs(False))
    outside = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with autocast_context(torch.bfloat16, device="cpu"):
        inside = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert F.linear(q, torch.ones(32, 32)).dtype == torch.bfloat16  # autocast itself still on
    # torch's autocast alone would cast these fp32 inputs to bf16 for the bf16 kernel
    assert inside.dtype == torch.bfloat16 and torch.equal(inside, outside.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert not torch.equal(plain, outside.bfloat16())
    with autocast_context(None, device="cpu"):
        assert not torch.is_autocast_cpu_enabled()


def test_ddp_on_a_cpu_steps_with_torchs_fused_adamw():
    import torch

    from rmrun.model.boost import _optimizer
    from rmrun.recipe.schema import ScheduleSection

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = _optimizer(model, plugin=PluginSection(name="ddp"), schedule=ScheduleSection(), cuda=False)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
