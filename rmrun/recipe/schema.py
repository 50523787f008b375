"""The recipe schema: one frozen dataclass per TOML table.

Every field carries its documentation in ``metadata["doc"]``; ``rmrun explain`` and
``--help`` print it, so the schema is the single place a key is described. Fields
marked ``path=True`` hold file locations and are resolved against the directory of
the recipe file that sets them; ``path="files"`` fields (data files) are resolved the
same way and a directory or glob pattern in them becomes the sorted data files it holds
(:func:`is_data_file_name`); ``path="or-name"`` fields (a model directory or a hub
id) are resolved only when that local path exists, and ``package:NAME/dir`` names a
folder inside an installed Python package; ``path="or-template"`` fields hold either a
file or the Jinja template text itself. This module imports only the standard library.
"""

# Optional[X] stays: typing.get_type_hints gives typing.Union for it but types.UnionType
# for ``X | None``, and code that reads the schema by its types compares origins with Union.
# ruff: noqa: UP045

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from rmrun.recipe.data_section import DataFormat, DataSection, SourceSection  # noqa: F401
from rmrun.recipe.fields import doc
from rmrun.recipe.names import (  # noqa: F401
    COMPRESSION_SUFFIXES,
    DATA_FILE_SUFFIXES,
    DEFAULT_RATING,
    PACKAGE_PREFIX,
    RATED_FORMATS,
    is_data_file_name,
    is_template_text,
)
from rmrun.recipe.trackers import MlflowSection, TrackerName, WandbSection

PluginName = Literal["ddp", "zero2", "zero2_cpu", "gemini", "gemini_auto", "3d"]
Precision = Literal["fp32", "fp16", "bf16"]


@dataclass(frozen=True)
class RunSection:
    """[run]: identity of the run and where its state lives."""

    name: str = doc("Name of the run; the default state directory is state/<name>.", "rmrun")
    seed: int = doc("Seed for every random number generator and for the data order.", 42)
    state: Optional[str] = doc(
        "State root: a local path or any fsspec URL (s3://bucket/prefix, gs://..., memory://...). "
        "Holds tokenized data, checkpoints, records and the run lease. Default: state/<name>.",
        None,
        path=True,
    )
    store_retry_seconds: float = doc(
        "How long an operation on a remote state store (s3://, gs://...) retries connection errors, "
        "timeouts, 5xx and throttling (exponential backoff with jitter) before the run stops with "
        "the preempted exit code: nothing committed is lost, and the same command resumes.",
        120.0,
    )
    preempted_exit_code: int = doc(
        "Exit code of a run stopped by SIGTERM/SIGUSR1 (after committing a checkpoint when training "
        "had started) or by a store that stayed unreachable: what the scheduler requeues on. 75 "
        "(EX_TEMPFAIL) for SLURM --requeue scripts, Kubernetes Job podFailurePolicy and SkyPilot; "
        "Kubeflow's PyTorchJob restartPolicy ExitCode retries only codes >= 128: use 143 there.",
        75,
    )
    collective_timeout_minutes: float = doc(
        "How long a rank waits in a collective of the default process group (rmrun's broadcasts and "
        "barriers) for the others before it gives up and the job fails. Some phases run on rank 0 alone while the other "
        "ranks wait: tokenizing the data set, writing the export. torch's own default (10 minutes for "
        "NCCL, 30 for gloo) kills a run whose data takes longer than that to tokenize; a rank that truly "
        "hangs is still caught, after this long. Does not change results.",
        60.0,
    )


@dataclass(frozen=True)
class LoraSection:
    """[model.lora]: low-rank adapters; the score head always trains."""

    r: int = doc("LoRA rank.", 8)
    alpha: float = doc("LoRA alpha (scaling = alpha / r).", 16.0)
    dropout: float = doc("Dropout on the LoRA branch.", 0.0)
    target_modules: tuple[str, ...] = doc("Module names to adapt.", ("q_proj", "k_proj", "v_proj", "o_proj"))


@dataclass(frozen=True)
class ModelSection:
    """[model]: the backbone and the reward head built on it."""

    pretrain: str = doc(
        "Hugging Face model directory (or hub id already in the local cache, or package:NAME/dir for model "
        "files an installed Python package ships). Encoders (BERT, RoBERTa, DeBERTa, ModernBERT, ...) and "
        "decoders (Llama, Qwen, Mistral, Gemma, GPT-2, OPT, ...) with a ForSequenceClassification class.",
        "",
        path="or-name",
        required=True,
    )
    tokenizer: Optional[str] = doc(
        "Tokenizer directory (or hub id, or package:NAME/dir). Default: model.pretrain.", None, path="or-name"
    )
    init: Literal["pretrained", "random"] = doc(
        '"pretrained" loads the backbone weights; "random" builds the model from its config alone.',
        "pretrained",
    )
    lora: Optional[LoraSection] = doc("LoRA adapters; absent means full fine-tuning.", None)
    trust_remote_code: bool = doc(
        "Run the Python code a model or tokenizer directory ships (its auto_map). Off: such a model "
        "is refused with a one-line error, never a prompt.",
        False,
    )


@dataclass(frozen=True)
class PluginSection:
    """[plugin]: the ColossalAI plugin and its parallelism."""

    name: PluginName = doc(
        "ColossalAI plugin: ddp, zero2, zero2_cpu, gemini, gemini_auto or 3d. Only ddp runs without CUDA.",
        "ddp",
    )
    mixed_precision: Precision = doc(
        "Training precision: fp32, fp16 or bf16 (on a CPU: fp32, or bf16 with ddp where torch has oneDNN bf16 kernels).",
        "bf16",
    )
    tp: int = doc("Tensor-parallel size (3d only).", 1)
    pp: int = doc("Pipeline-parallel size (3d only).", 1)
    sp: int = doc("Sequence-parallel size (3d only).", 1)
    sp_mode: Literal["split_gather", "ring", "all_to_all", "ring_attn"] = doc(
        "Sequence-parallel mode (3d only, when sp > 1).", "split_gather"
    )
    zero_stage: int = doc("ZeRO stage inside the 3d plugin (0, 1 or 2).", 0)
    zero_cpu_offload: bool = doc("Offload ZeRO optimizer state to CPU (3d only).", False)
    grad_checkpoint: bool = doc("Recompute activations in backward to save memory.", False)
    flash_attn: bool = doc("Use flash attention where the plugin offers it.", False)
    microbatch_size: int = doc("Pipeline micro-batch size in pairs (3d with pp > 1).", 1)


@dataclass(frozen=True)
class LossSection:
    """[loss]: the pairwise ranking loss."""

    name: Literal["log_sig", "log_exp"] = doc(
        "log_sig: -logsigmoid(r_c - r_r - margin); log_exp: log(1 + exp(r_r - r_c + margin)).", "log_sig"
    )
    margin: float = doc("Margin the chosen reward must exceed the rejected one by.", 0.0)
    center_coef: float = doc(
        "Reward centering (arXiv 2312.09244; TRL's center_rewards_coefficient): adds center_coef * "
        "mean((r_c + r_r)^2) to the loss, keeping rewards near zero for PPO; logged as center_loss. 0: off.",
        0.0,
    )


@dataclass(frozen=True)
class ScheduleSection:
    """[schedule]: optimisation and its length."""

    max_epochs: int = doc("Passes over the training data.", 1)
    batch_size: int = doc("Pairs per process per micro-batch.", 8)
    accumulation_steps: int = doc("Micro-batches per optimizer step.", 1)
    lr: float = doc("Peak learning rate.", 5e-6)
    warmup_steps: Optional[int] = doc(
        "Linear warmup steps, at most the run's optimizer steps. Default: 2.5% of the optimizer steps.", None
    )
    weight_decay: float = doc("AdamW weight decay (never on biases and norms).", 0.1)
    grad_clip: float = doc("Clip the global gradient norm to this value (0 turns clipping off).", 1.0)
    max_steps: Optional[int] = doc("Stop after this many optimizer steps (a cap on max_epochs).", None)
    nonfinite: Literal["error", "skip"] = doc(
        "A non-finite loss: stop with an error naming the step, or skip that optimizer step.", "error"
    )


@dataclass(frozen=True)
class CheckpointSection:
    """[checkpoint]: when training state is committed (always at epoch ends and on SIGTERM)."""

    interval_steps: Optional[int] = doc("Commit a checkpoint every N optimizer steps.", 100)
    interval_seconds: Optional[float] = doc("Commit a checkpoint when this many seconds have passed.", None)
    keep: int = doc("Committed checkpoints to keep (at least 2).", 2)
    async_upload: bool = doc(
        "Upload checkpoints in the background: at the step boundary every rank writes its part of the state "
        "to node-local scratch (the same bytes as a blocking checkpoint), training goes on while each rank "
        "uploads its own files, and the checkpoint is committed once every rank's upload is complete. At most "
        "one is in flight; the next checkpoint, an epoch end, the end of training and a stop signal wait for "
        "it (on SIGTERM the upload in flight finishes, then the final checkpoint is taken, blocking). A kill "
        "during an upload leaves the previous checkpoint as the newest committed one. false: training waits "
        "for every checkpoint to be committed.",
        True,
    )
    stop_budget_seconds: float = doc(
        "Time a checkpoint may take from the step boundary to its commit (snapshot + upload + commit) before "
        "the run warns, once, that a stop signal's final checkpoint may not finish in time: the notice a "
        "spot machine gets before it is taken away (about 30 s on GCP, 120 s on AWS). Each checkpoint's "
        "snapshot and upload seconds are recorded with it and shown by `rmrun status`.",
        120.0,
    )


@dataclass(frozen=True)
class EvalSection:
    """[eval]: evaluation on data.eval (always at each epoch end)."""

    interval_steps: Optional[int] = doc("Also evaluate every N optimizer steps.", None)
    batch_size: Optional[int] = doc("Pairs per process per eval batch. Default: schedule.batch_size.", None)


@dataclass(frozen=True)
class LogSection:
    """[log]: what the run reports while it trains."""

    interval_steps: int = doc("Print a log line every N optimizer steps (metrics.jsonl gets every step).", 10)
    tensorboard: bool = doc(
        "Also write TensorBoard events under <state>/tensorboard (on a remote state they are written "
        "locally and copied there every minute, at epoch ends and at the end).",
        False,
    )
    progress: Literal["auto", "bar", "lines", "off"] = doc(
        "Progress display: a bar on a terminal and plain lines otherwise (auto).", "auto"
    )
    trackers: tuple[TrackerName, ...] = doc(
        'Experiment trackers to send the metrics to: "wandb", "mlflow" (pip install "rmrun[wandb]" / '
        '"rmrun[mlflow]"). Rank 0 sends from a background thread; every start of a run, on any machine, '
        "continues the one tracker run whose id the state keeps, and a step is sent once however often "
        "the run is preempted. A tracker that fails costs a warning, never the training.",
        (),
    )
    wandb: WandbSection = doc("Weights & Biases options.", factory=WandbSection)
    mlflow: MlflowSection = doc("MLflow options.", factory=MlflowSection)


@dataclass(frozen=True)
class OutputSection:
    """[output]: where the trained reward model is exported."""

    dir: Optional[str] = doc(
        "Export directory (local path or fsspec URL): a Hugging Face model plus recipe, plan and metrics. "
        "Default: <run.state>/export; any other location must lie outside run.state, whose folders rmrun "
        "manages.",
        None,
        path=True,
    )
    reward_stats: bool = doc(
        "Score the training pairs (every one, or a sample of output.reward_stats_pairs) with the final "
        "model (one forward pass, no backward) and store the rewards' mean and std in the export's "
        "config.json as `mean` and `std` (the names OpenRLHF reads to normalize rewards; "
        "`normalize_reward` is written as false, so nothing changes unless the RLHF stage asks for it).",
        True,
    )
    reward_stats_pairs: int = doc(
        "How many training pairs output.reward_stats scores: a uniform sample of this many, drawn from "
        "run.seed (the same pairs on a resume and on any number of processes), or every pair when the "
        "training set has no more. The export states the sample beside the statistics "
        "(`reward_stats.pairs` of `reward_stats.of` in rmrun.json). The default bounds the save step "
        "at any data size while keeping the mean and std to about 1% of the std; turn the statistics "
        "off with output.reward_stats = false.",
        10_000,
    )
    colossalchat: bool = doc(
        "Also write colossalchat-modeling.safetensors: the weights under ColossalChat's RewardModel names "
        "(backbone under model., head as value_head), for its PPO stage: "
        "--rm_pretrain <export> --rm_checkpoint_path <export>/colossalchat-modeling.safetensors.",
        False,
    )


@dataclass(frozen=True)
class Recipe:
    """A whole recipe: one section per TOML table."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    plugin: PluginSection = field(default_factory=PluginSection)
    loss: LossSection = field(default_factory=LossSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)
    output: OutputSection = field(default_factory=OutputSection)

    @property
    def state_url(self) -> str:
        return self.run.state or f"state/{self.run.name}"

    @property
    def export_url(self) -> str:
        import posixpath

        return self.output.dir or posixpath.join(self.state_url, "export")


def fresh_run_hint(recipe: Recipe) -> str:
    """How to start afresh instead of resuming a stored run: a new state root when the recipe
    names one (a new run.name would not move it), else a new run name (its default state)."""
    if recipe.run.state is not None:
        return f"set a new run.state (it is set to {recipe.run.state})"
    return "use a new run.name"
