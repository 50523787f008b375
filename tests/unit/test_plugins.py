"""The plugin table: each plugin name → the ColossalAI class and constructor keyword
arguments of ColossalChat's train_rm.py, as plain data, without building anything.

Only the last test imports ColossalAI, to check every keyword against the installed
classes' signatures.
"""

from __future__ import annotations

import inspect

import pytest

from rmrun.recipe.plugins import INITIAL_SCALE, PLUGINS, autocast_dtype, booster_mixed_precision, plugin_call
from rmrun.recipe.schema import PluginSection, ScheduleSection

SCHEDULE = ScheduleSection(grad_clip=0.7, accumulation_steps=1)


def call(schedule=SCHEDULE, **plugin):
    return plugin_call(PluginSection(**plugin), schedule)


def test_the_six_plugin_names():
    assert set(PLUGINS) == {"ddp", "zero2", "zero2_cpu", "gemini", "gemini_auto", "3d"}
    assert INITIAL_SCALE == 2**16
    assert [name for name, spec in PLUGINS.items() if not spec.needs_cuda] == ["ddp"]
    assert {name for name, spec in PLUGINS.items() if not spec.supports_lora} == {"gemini", "gemini_auto"}


def test_ddp():
    assert call(name="ddp", mixed_precision="fp32") == (
        "TorchDDPPlugin",
        {"find_unused_parameters": False, "broadcast_buffers": False},
    )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gemini_static(precision):
    assert call(name="gemini", mixed_precision=precision, flash_attn=True) == (
        "GeminiPlugin",
        {
            "precision": precision,
            "placement_policy": "static",
            "initial_scale": 2**16,
            "max_norm": 0.7,
            "enable_flash_attention": True,
            "enable_gradient_accumulation": False,
        },
    )


def test_gemini_enables_gradient_accumulation_when_the_schedule_accumulates():
    _, args = call(ScheduleSection(accumulation_steps=4, grad_clip=1.0), name="gemini")
    assert args["enable_gradient_accumulation"] is True
    assert args["max_norm"] == 1.0


def test_gemini_auto():
    assert call(name="gemini_auto", mixed_precision="fp16") == (
        "GeminiPlugin",
        {
            "precision": "fp16",
            "placement_policy": "auto",
            "initial_scale": 2**16,
            "max_norm": 0.7,
            "enable_flash_attention": False,
        },
    )


def test_zero2():
    # cpu_offload=False is LowLevelZeroPlugin's default, spelled out so zero2 and zero2_cpu differ in one key.
    assert call(name="zero2", mixed_precision="bf16") == (
        "LowLevelZeroPlugin",
        {"stage": 2, "precision": "bf16", "initial_scale": 2**16, "max_norm": 0.7, "cpu_offload": False},
    )


def test_zero2_cpu():
    assert call(name="zero2_cpu", mixed_precision="fp16") == (
        "LowLevelZeroPlugin",
        {"stage": 2, "precision": "fp16", "initial_scale": 2**16, "max_norm": 0.7, "cpu_offload": True},
    )


def test_3d():
    assert call(
        name="3d",
        mixed_precision="bf16",
        tp=2,
        pp=1,
        zero_stage=1,
        zero_cpu_offload=True,
        flash_attn=True,
        microbatch_size=2,
    ) == (
        "HybridParallelPlugin",
        {
            "tp_size": 2,
            "pp_size": 1,
            "sp_size": 1,
            "sequence_parallelism_mode": None,
            "zero_stage": 1,
            "enable_flash_attention": True,
            "enable_sequence_parallelism": False,
            "cpu_offload": True,
            "parallel_output": False,
            "max_norm": 0.7,
            "precision": "bf16",
            # Not in train_rm.py: the micro-batch size only matters with pp > 1 (which the recipe
            # checks reject for reward models), and initial_scale is the class default, spelled out
            # like the other plugins'.
            "microbatch_size": 2,
            "initial_scale": 2**16,
        },
    )


@pytest.mark.parametrize("mode", ["split_gather", "ring", "all_to_all", "ring_attn"])
def test_3d_sequence_parallelism(mode):
    _, args = call(name="3d", tp=2, sp=2, sp_mode=mode)
    assert (args["sp_size"], args["sequence_parallelism_mode"], args["enable_sequence_parallelism"]) == (2, mode, True)
    _, off = call(name="3d", tp=2, sp=1, sp_mode=mode)
    assert (off["sequence_parallelism_mode"], off["enable_sequence_parallelism"]) == (None, False)


def test_plugin_call_uses_only_its_two_sections():
    # Grad clip comes from the schedule, everything else from the plugin section.
    for name in PLUGINS:
        _, a = call(ScheduleSection(grad_clip=0.25), name=name)
        _, b = call(ScheduleSection(grad_clip=0.25, lr=1.0, batch_size=99, max_epochs=7), name=name)
        assert a == b
        if name != "ddp":
            assert a["max_norm"] == 0.25


def test_booster_mixed_precision():
    # ColossalAI 0.5.0's Booster has fp16 (torch AMP) but no bf16: ddp in bf16 autocasts itself.
    assert booster_mixed_precision(PluginSection(name="ddp", mixed_precision="fp16")) == "fp16"
    assert booster_mixed_precision(PluginSection(name="ddp", mixed_precision="bf16")) is None
    assert autocast_dtype(PluginSection(name="ddp", mixed_precision="bf16")) == "bf16"
    assert booster_mixed_precision(PluginSection(name="ddp", mixed_precision="fp32")) is None
    assert autocast_dtype(PluginSection(name="ddp", mixed_precision="fp32")) is None
    for name in ("zero2", "zero2_cpu", "gemini", "gemini_auto", "3d"):
        for precision in ("bf16", "fp16"):
            assert booster_mixed_precision(PluginSection(name=name, mixed_precision=precision)) is None
            assert autocast_dtype(PluginSection(name=name, mixed_precision=precision)) is None


def test_every_keyword_exists_in_the_installed_colossalai_class():
    pytest.importorskip("colossalai")
    from rmrun.model.boost import plugin_class

    for name in PLUGINS:
        # Every boolean and size switched away from its default, so every keyword appears.
        section = PluginSection(
            name=name,
            tp=2,
            pp=2,
            sp=2,
            sp_mode="all_to_all",
            zero_stage=1,
            zero_cpu_offload=True,
            flash_attn=True,
            microbatch_size=2,
        )
        class_name, args = plugin_call(section, ScheduleSection(accumulation_steps=2))
        cls = plugin_class(class_name)
        parameters = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(args) - set(parameters))
        assert not unknown, f"{name}: {class_name}.__init__ has no parameter(s) {unknown}"
    # The keywords rmrun spells out beyond train_rm.py's are the classes' own defaults.
    for class_name, key, value in (
        ("LowLevelZeroPlugin", "cpu_offload", False),
        ("HybridParallelPlugin", "initial_scale", 2**16),
        ("GeminiPlugin", "initial_scale", 2**16),
    ):
        assert inspect.signature(plugin_class(class_name).__init__).parameters[key].default == value
