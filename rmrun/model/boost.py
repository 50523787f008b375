"""Building the ColossalAI plugin, optimizer and scheduler, and boosting the model.

The one module that imports ``colossalai.booster``; everything that touches the
Booster or ColossalAI's optimizer internals (backward, no_sync, checkpoint I/O, the
export's gathered weights, the loss scaler) goes through :class:`Boosted`. What each
plugin is and does comes from the plugin table (:mod:`rmrun.recipe.plugins`).
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from rmrun.recipe.plan import Plan
from rmrun.recipe.plugins import PLUGINS
from rmrun.recipe.schema import PluginSection, ScheduleSection

MIN_LR_RATIO = 0.1
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def warmup_cosine(*, warmup_steps: int, total_steps: int, min_ratio: float = MIN_LR_RATIO):
    """Linear warmup, then cosine from the peak down to ``min_ratio`` × peak."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def parameter_groups(model: torch.nn.Module, *, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (anything one-dimensional)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(
    model: torch.nn.Module, *, plugin: PluginSection, schedule: ScheduleSection, cuda: bool
) -> torch.optim.Optimizer:
    groups = parameter_groups(model, weight_decay=schedule.weight_decay)
    lr, betas, eps = schedule.lr, (0.9, 0.95), 1e-8
    if cuda:
        from colossalai.nn.optimizer import HybridAdam

        return HybridAdam(groups, adamw_mode=True, lr=lr, betas=betas, eps=eps)
    # torch's fused CPU kernel (one vectorised pass over each parameter, not a dozen elementwise
    # ops): on the benchmarks' small Llama the optimizer step took 26 ms against 112 for the
    # default per-parameter loop, a sixth of an fp32 training step; deterministic as the loop is.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)


class Fp32AttentionOnCpu(torch.overrides.TorchFunctionMode):
    """Scaled dot-product attention under CPU autocast computed by torch's fp32 CPU flash kernel,
    the output in the autocast dtype. Autocast would cast SDPA's inputs to bf16 (the linear layers
    hand it bf16 values, and queries and keys in bf16, or in fp32 where a rotary embedding in fp32
    promoted them: Llama's), and torch 2.5's CPU flash kernel is slower in bf16 than in fp32: on an AMX
    Xeon, forward + backward of (16 rows, 4 heads, 144 tokens, 64) took 56 ms in bf16 against 25
    in fp32 casts included (256 tokens x 12 heads: 196 against 113; 512 tokens: 292 against 214;
    the math kernel in bf16 was faster only at 144 tokens). Every model family's attention goes
    through ``torch.nn.functional.scaled_dot_product_attention``, so this catches them all."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            query, key, value = args[:3]
            if query.device.type == "cpu" and torch.is_autocast_cpu_enabled():
                with torch.autocast("cpu", enabled=False):
                    out = func(query.float(), key.float(), value.float(), *args[3:], **kwargs)
                return out.to(torch.get_autocast_cpu_dtype())  # the dtype autocast would have given
        return func(*args, **kwargs)


@contextmanager
def autocast_context(dtype: torch.dtype | None, *, device: str):
    """``torch.autocast`` to ``dtype`` on ``device`` ("cuda" or "cpu"), on a CPU with the attention
    in fp32 (:class:`Fp32AttentionOnCpu`); nothing when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device, dtype=dtype):
        if device == "cpu":
            with Fp32AttentionOnCpu():
                yield
        else:
            yield


@dataclass
class Boosted:
    booster: Any
    plugin: Any
    model: Any
    optimizer: Any
    scheduler: Any
    sharded: bool
    clips_itself: bool  # the plugin's optimizer clips gradients (max_norm)
    autocast: torch.dtype | None = None  # set where rmrun autocasts the forward itself (ddp in bf16)
    autocast_device: str = "cuda"  # "cpu": oneDNN's bf16 kernels (AMX / AVX512-BF16) run the matmuls

    @property
    def dp_group(self):
        return getattr(self.plugin, "dp_group", None)

    def backward(self, loss: torch.Tensor) -> None:
        self.booster.backward(loss, self.optimizer)

    def no_sync(self, active: bool):
        if active and self.plugin.support_no_sync():
            return self.booster.no_sync(self.model, self.optimizer)
        return nullcontext()

    def clip(self, max_norm: float) -> float | None:
        if self.clips_itself or max_norm <= 0:
            return None
        norm = self.optimizer.clip_grad_by_norm(max_norm)
        return float(norm) if norm is not None else None

    def forward_context(self):
        """Autocast around the forward where neither the plugin nor the Booster handles precision."""
        return autocast_context(self.autocast, device=self.autocast_device)

    def unwrap(self):
        return self.model.unwrap(unwrap_peft=False)

    def save_sharded_model(self, directory: str) -> None:
        """The sharded model's full weights gathered into safetensors shards (every rank takes part)."""
        self.booster.save_model(self.model, directory, shard=True, use_safetensors=True)

    # checkpoint I/O: local directories, one per rank (no path is shared); each rank uploads
    # the files it wrote, so their names must not collide across ranks
    def save(self, directory: str) -> None:
        import os

        if self.sharded:
            self.booster.save_model(self.model, os.path.join(directory, "model"), shard=True, use_safetensors=True)
            self.booster.save_optimizer(self.optimizer, os.path.join(directory, "optimizer"), shard=True)
        else:
            self.booster.save_model(self.model, os.path.join(directory, "model.safetensors"), use_safetensors=True)
            self.booster.save_optimizer(self.optimizer, os.path.join(directory, "optimizer.pt"))
        self.booster.save_lr_scheduler(self.scheduler, os.path.join(directory, "scheduler.pt"))
        scaler = find_grad_scaler(self.optimizer)
        # The same on every rank (overflow checks are all-reduced); each rank uploads what it
        # writes, so rank 0 alone writes it.
        if scaler is not None and _world()[0] == 0:
            with open(os.path.join(directory, "loss_scale.json"), "w") as f:
                json.dump(capture_grad_scaler(scaler), f)
        save_zero_masters(self.model, self.optimizer, directory)

    def load(self, directory: str) -> None:
        import os

        if self.sharded:
            self.booster.load_model(self.model, os.path.join(directory, "model"))
            self.booster.load_optimizer(self.optimizer, os.path.join(directory, "optimizer"))
        else:
            self.booster.load_model(self.model, os.path.join(directory, "model.safetensors"))
            self.booster.load_optimizer(self.optimizer, os.path.join(directory, "optimizer.pt"))
        self.booster.load_lr_scheduler(self.scheduler, os.path.join(directory, "scheduler.pt"))
        scaler = find_grad_scaler(self.optimizer)
        saved = os.path.join(directory, "loss_scale.json")
        if scaler is not None and os.path.exists(saved):
            with open(saved) as f:
                restore_grad_scaler(scaler, json.load(f))
        load_zero_masters(self.model, self.optimizer, directory)


def find_grad_scaler(optimizer):
    """The dynamic loss scaler of a boosted optimizer, if it has one.

    ColossalAI's ZeRO and Gemini optimizers keep it in their fp16 mixin and leave it
    out of their ``state_dict`` (scale, growth and hysteresis counters alike); torch
    amp's ``GradScaler`` sits on the ddp plugin's optimizer wrapper. Either way rmrun
    saves it beside the optimizer.
    """
    for holder in (optimizer, getattr(optimizer, "optim", None)):
        if holder is None:
            continue
        mixin = getattr(holder, "mixed_precision_mixin", None) or getattr(holder, "mix_precision_mixin", None)
        if mixin is not None and getattr(mixin, "grad_scaler", None) is not None:
            return mixin.grad_scaler
        if getattr(holder, "scaler", None) is not None:
            return holder.scaler
    return None


def capture_grad_scaler(scaler) -> dict:
    """Every number in the scaler (for torch's GradScaler: its state_dict), as JSON."""
    if hasattr(scaler, "_growth_tracker") or type(scaler).__name__ == "GradScaler":
        return {
            "kind": "torch",
            "state": {k: (v.item() if torch.is_tensor(v) else v) for k, v in scaler.state_dict().items()},
        }
    fields: dict[str, Any] = {}
    for name, value in vars(scaler).items():
        if torch.is_tensor(value):
            fields[name] = {"tensor": value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
        elif isinstance(value, (bool, int, float, type(None))):
            fields[name] = value
    return {"kind": "colossalai", "fields": fields}


def restore_grad_scaler(scaler, saved: dict) -> None:
    if saved["kind"] == "torch":
        scaler.load_state_dict(saved["state"])
        return
    for name, value in saved["fields"].items():
        current = getattr(scaler, name, None)
        if isinstance(value, dict) and "tensor" in value:
            device = current.device if torch.is_tensor(current) else "cpu"
            value = torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]), device=device)
        setattr(scaler, name, value)


# ZeRO (LowLevelZero, and HybridParallel with zero_stage > 0) keeps fp32 master shards
# outside both state dicts: ``load_model`` rebuilds them from the bf16/fp16 working weights,
# which drops their low bits, so a resumed run would drift from one that never stopped.
# Each rank saves its own master shards and puts them back after the Booster's load.
MASTERS = "zero_master"


def _zero_masters(model, optimizer) -> dict[str, torch.Tensor]:
    mapping = getattr(optimizer, "working_to_master_param", None)
    if mapping is None:
        return {}
    return {name: mapping[id(p)] for name, p in model.named_parameters() if id(p) in mapping}


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _masters_file(directory: str) -> str:
    import os

    return os.path.join(directory, MASTERS, f"rank-{_world()[0]:05d}.safetensors")


def save_zero_masters(model, optimizer, directory: str) -> None:
    import os

    from safetensors.torch import save_file

    masters = _zero_masters(model, optimizer)
    if not masters:
        return
    path = _masters_file(directory)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(
        {name: t.detach().to("cpu", copy=True).contiguous() for name, t in masters.items()},
        path,
        metadata={"world_size": str(_world()[1])},
    )


def load_zero_masters(model, optimizer, directory: str) -> None:
    """Put this rank's saved master shards back; shards saved under another layout (a changed
    world size) do not fit and are left as the Booster rebuilt them."""
    import os

    from safetensors.torch import load_file

    masters = _zero_masters(model, optimizer)
    path = _masters_file(directory)
    if not masters or not os.path.exists(path):
        return
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        if (f.metadata() or {}).get("world_size") != str(_world()[1]):
            return
    saved = load_file(path)
    if set(saved) != set(masters) or any(saved[n].shape != t.shape for n, t in masters.items()):
        return
    with torch.no_grad():
        for name, master in masters.items():
            master.copy_(saved[name].to(master.device, master.dtype))


def compiles_at_import(plan: Plan) -> bool:
    """Whether the recipe uses what ColossalAI compiles when ``colossalai.booster`` is
    imported: its ring-attention helper (``plugin.sp_mode = "ring_attn"``); the rest is fp8
    communication, which rmrun never turns on."""
    return plan.plugin_args.get("sequence_parallelism_mode") == "ring_attn"


def _import_booster(plan: Plan) -> None:
    """Import ``colossalai.booster`` (once a process; the first plan decides) with
    bitsandbytes and, unless the recipe needs them, ColossalAI's import-time compiles left
    eager, which keeps torch's inductor out of the process (:mod:`rmrun.model.thirdparty`)."""
    _import_booster_module(compiles=compiles_at_import(plan))


def _import_booster_module(*, compiles: bool) -> None:
    from rmrun.model.thirdparty import compile_off, import_bitsandbytes

    if "colossalai.booster" in sys.modules:
        return
    import_bitsandbytes()
    with nullcontext() if compiles else compile_off():
        import colossalai.booster  # noqa: F401


def _colossalai_plugin(class_name: str):
    def build(**arguments):
        return plugin_class(class_name)(**arguments)

    return build


# A builder for each ColossalAI plugin class the plugin table names (``PluginSpec.class_name``).
BUILDERS = {
    name: _colossalai_plugin(name)
    for name in ("TorchDDPPlugin", "LowLevelZeroPlugin", "GeminiPlugin", "HybridParallelPlugin")
}


def plugin_class(class_name: str):
    """The ColossalAI plugin class; ``colossalai.booster`` is imported first where no plan has
    imported it yet, with its import-time compiles left eager."""
    _import_booster_module(compiles=False)
    import colossalai.booster.plugin as plugins

    return getattr(plugins, class_name)


def make_plugin(plan: Plan):
    _import_booster(plan)
    return BUILDERS[plan.plugin_class](**plan.plugin_args)


def boost(model, *, plan: Plan, plugin: PluginSection, schedule: ScheduleSection, cuda: bool) -> Boosted:
    _import_booster(plan)
    from colossalai.booster import Booster

    colossal_plugin = make_plugin(plan)
    if cuda:
        model = model.cuda()
    optimizer = _optimizer(model, plugin=plugin, schedule=schedule, cuda=cuda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(warmup_steps=plan.warmup_steps, total_steps=plan.total_steps)
    )
    booster = Booster(plugin=colossal_plugin, mixed_precision=plan.booster_mixed_precision)
    model, optimizer, _, _, scheduler = booster.boost(model, optimizer, lr_scheduler=scheduler)
    return Boosted(
        booster=booster,
        plugin=colossal_plugin,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        sharded=PLUGINS[plugin.name].sharded,
        clips_itself=PLUGINS[plugin.name].clips_gradients == "plugin",
        autocast=_DTYPES[plan.autocast] if plan.autocast else None,
        autocast_device="cuda" if cuda else "cpu",
    )
