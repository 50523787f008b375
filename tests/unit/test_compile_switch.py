"""The switch that keeps torch's inductor out of a run (``rmrun.model.thirdparty``), in-process: it puts
back what was there, drops only the bitsandbytes ``kernels`` notice, and only ring attention keeps
ColossalAI's import-time compiles. What each command imports is in tests/e2e/test_startup_imports.py."""

from __future__ import annotations

import logging
import os

import pytest

from rmrun.model.thirdparty import DYNAMO_OFF, KERNELS_NOTICE, _DropKernelsNotice, compile_off
from rmrun.recipe.plugins import plugin_call
from rmrun.recipe.schema import PluginSection, ScheduleSection

# ------------------------------------------------------------------ the switch itself


def test_compile_off_puts_back_what_was_there(monkeypatch):
    monkeypatch.delenv(DYNAMO_OFF, raising=False)
    with compile_off():
        assert os.environ[DYNAMO_OFF] == "1"
    assert DYNAMO_OFF not in os.environ
    monkeypatch.setenv(DYNAMO_OFF, "0")
    with pytest.raises(RuntimeError), compile_off():
        raise RuntimeError("an import that fails")
    assert os.environ[DYNAMO_OFF] == "0"


def test_only_the_kernels_notice_is_dropped():
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("bitsandbytes.backends.cpu.ops", logging.WARNING, __file__, 1, message, (), None)

    drop = _DropKernelsNotice()
    assert not drop.filter(record(KERNELS_NOTICE + ": No module named 'kernels'. Please ..."))
    assert drop.filter(record("Failed to load CPU gemm_4bit_forward: something else"))
    assert drop.filter(record("some other warning"))


@pytest.mark.parametrize(
    "plugin,compiled",
    [
        (PluginSection(name="ddp"), False),
        (PluginSection(name="3d", tp=2), False),
        (PluginSection(name="3d", sp=2, sp_mode="split_gather"), False),
        (PluginSection(name="3d", sp=2, sp_mode="ring_attn"), True),
    ],
)
def test_only_ring_attention_keeps_colossalai_import_time_compiles(plugin, compiled):
    from types import SimpleNamespace

    from rmrun.model.boost import compiles_at_import

    _, arguments = plugin_call(plugin, ScheduleSection())
    assert compiles_at_import(SimpleNamespace(plugin_args=arguments)) is compiled
