"""Helpers shared by test modules (no test module imports another): running rmrun as users do,
as a subprocess; recipes on a slice of the quickstart data; small models and model folders."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rmrun.data import TokenizedPairs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "recipes", "quickstart.toml")
# The exact-resume recipe: a tiny Llama with dropout on, so a lost RNG stream shows.
RESUME_RECIPE = os.path.join(REPO, "tests", "assets", "resume.toml")
TRAIN_DATA = os.path.join(REPO, "recipes", "data", "quickstart_train.jsonl")
EVAL_DATA = os.path.join(REPO, "recipes", "data", "quickstart_eval.jsonl")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop("RMRUN_FAULTS", None)
    env.pop("RMRUN_TRACE_PAIRS", None)
    env["PYTHONWARNINGS"] = "ignore"
    # One intra-op thread in every rmrun the tests start: the tests compare runs started in
    # different processes bit for bit, and a threaded CPU kernel can still round differently
    # from one process to the next (rmrun sets MKL_CBWR=AUTO; docs/resume.md, "What a checkpoint holds").
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def rmrun(*args: str, nproc: int = 1, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``rmrun ARGS`` (or ``torchrun --nproc_per_node=N -m rmrun ARGS``) with captured output."""
    if nproc == 1:
        command = [sys.executable, "-m", "rmrun", *args]
    else:
        command = [
            TORCHRUN,
            f"--nproc_per_node={nproc}",
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=localhost:0",
            "-m",
            "rmrun",
            *args,
        ]
    return subprocess.run(command, env=env or child_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def head_lines(source: str, target: str, count: int) -> str:
    with open(source) as f, open(target, "w") as out:
        for _, line in zip(range(count), f):
            out.write(line)
    return target


def slice_recipe(
    tmp_path, *, base: str, train_pairs: int, eval_pairs: int, body: str = "", name: str = "recipe.toml"
) -> str:
    """A recipe extending ``base`` on the first pairs of the quickstart data, its state under
    tmp_path, then ``body`` (more TOML tables)."""
    train = head_lines(TRAIN_DATA, str(tmp_path / "train.jsonl"), train_pairs)
    evaluation = head_lines(EVAL_DATA, str(tmp_path / "eval.jsonl"), eval_pairs)
    path = tmp_path / name
    path.write_text(
        f'extends = "{base}"\n'
        f'[run]\nstate = "{tmp_path / "state"}"\n'
        f'[data]\ntrain = ["{train}"]\neval = ["{evaluation}"]\n'
        f"{body}"
    )
    return str(path)


def small_recipe(tmp_path, *, train_pairs: int = 64, eval_pairs: int = 16, extra: str = "") -> str:
    """A quickstart-based recipe on a slice of the data, state and export under tmp_path."""
    body = f'[log]\nprogress = "lines"\n{extra}'
    return slice_recipe(tmp_path, base=QUICKSTART, train_pairs=train_pairs, eval_pairs=eval_pairs, body=body)


def train_on_files(root, *, train: str, eval: str, data: str) -> dict:
    """Train the quickstart for one epoch on ``train`` (evaluated on ``eval``), ``data`` more
    ``[data]`` lines; the recipe, export, final eval and stdout of the finished run."""
    import json

    recipe = root / "recipe.toml"
    recipe.write_text(
        f'extends = "{QUICKSTART}"\n[run]\nstate = "{root / "state"}"\n'
        f'[data]\n{data}\ntrain = ["{train}"]\neval = ["{eval}"]\n'
        '[schedule]\nmax_epochs = 1\nbatch_size = 8\n[log]\nprogress = "lines"\n'
    )
    done = rmrun("run", str(recipe))
    assert done.returncode == 0, done.stderr[-3000:]
    export = root / "state" / "export"
    final = json.loads((export / "eval.json").read_text())["final"]
    return {"root": root, "recipe": str(recipe), "export": str(export), "final": final, "stdout": done.stdout}


def recipe_problems(path: str, *, overrides=()) -> list[str]:
    """The problem lines ``load_recipe`` refuses ``path`` with (fails the test if it loads)."""
    from rmrun.recipe import RecipeError, load_recipe

    try:
        load_recipe(path, overrides=overrides)
    except RecipeError as error:
        assert str(error) == "\n".join(error.problems)
        return error.problems
    raise AssertionError(f"{path} loaded without a problem")


def quickstart_slice(tmp_path, extra: str | None = None) -> str:
    """The quickstart on 32 training and 8 eval pairs, batch size 8, then ``extra`` TOML."""
    body = f"[schedule]\nbatch_size = 8\n{extra or ''}"
    return slice_recipe(tmp_path, base=QUICKSTART, train_pairs=32, eval_pairs=8, body=body)


def custom_code_model(tmp_path):
    """A model folder whose config names Python code to run; (its path, the file that code creates)."""
    import json

    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "rmrun_custom",
                "hidden_size": 8,
                "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"},
            }
        )
    )
    marker = tmp_path / "ran"
    (tmp_path / "configuration_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return str(tmp_path), marker


def llama_with_unused_part(directory) -> str:
    """The quickstart's tiny Llama with a layer in its backbone that the reward never uses (its
    own model code, so the recipe needs trust_remote_code): DDP must look for unused parameters."""
    import json

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(TINY_LLAMA, "config.json")) as f:
        config = json.load(f)
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_spare.SpareLlama"}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(directory, "modeling_spare.py"), "w") as f:
        f.write(
            "import torch\n"
            "from transformers import LlamaForSequenceClassification\n\n\n"
            "class SpareLlama(LlamaForSequenceClassification):\n"
            "    def __init__(self, config):\n"
            "        super().__init__(config)\n"
            "        self.model.spare = torch.nn.Linear(4, 4)  # never called\n"
        )
    return str(directory)


def build_tiny_bert(directory) -> str:
    """A 2-layer BERT config and a WordPiece tokenizer whose vocabulary is the quickstart's words."""
    import re

    from transformers import BertConfig, BertTokenizerFast

    words = set()
    for path in (TRAIN_DATA, EVAL_DATA):
        with open(path) as f:
            words.update(re.findall(r"\w+|[^\w\s]", f.read().lower()))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    os.makedirs(directory, exist_ok=True)
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w") as f:
        f.write("\n".join(specials + sorted(words)) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=vocab_file)
    tokenizer.save_pretrained(directory)
    BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    ).save_pretrained(directory)
    return str(directory)


# ----------------------------------------------------------------- the shared-prompt forward against the standard one

TINY_LLAMA = os.path.join(REPO, "recipes", "assets", "tiny-llama")
TINY_TOKENIZER = os.path.join(REPO, "recipes", "assets", "tiny-tokenizer")
REWARD_TOLERANCE = 1e-5  # absolute, rewards of order 1
GRADIENT_TOLERANCE = 1e-4  # relative, per parameter tensor


def pairs_of(chosen: list[list[int]], rejected: list[list[int]]) -> TokenizedPairs:
    import numpy as np

    from rmrun.data import TokenizedPairs

    def csr(sequences):
        ids = np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences])
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
        return ids, offsets

    (ci, co), (ri, ro) = csr(chosen), csr(rejected)
    return TokenizedPairs(ci, co, ri, ro, np.arange(len(chosen), dtype=np.int64))


def with_short_pairs(tokenized: TokenizedPairs) -> TokenizedPairs:
    """The pairs and, after them, a short copy of each (both sides cut 12 tokens past their shared
    prompt, the prompt included)."""
    from rmrun.data.share import shared_prefix_lengths

    prefix = shared_prefix_lengths(tokenized)
    chosen = [tokenized.chosen(i).tolist() for i in range(len(tokenized))]
    rejected = [tokenized.rejected(i).tolist() for i in range(len(tokenized))]
    cut = [min(int(p) + 12, 30) for p in prefix]
    return pairs_of(
        chosen + [c[:n] for c, n in zip(chosen, cut)], rejected + [r[: n - 2] for r, n in zip(rejected, cut)]
    )


def tiny_decoder(family: str, *, vocab_size: int, pad_token_id: int, attn: str):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification, Qwen2Config, Qwen2ForSequenceClassification

    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForSequenceClassification),
        "qwen2": (Qwen2Config, Qwen2ForSequenceClassification),
    }[family]
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_labels=1,
        pad_token_id=pad_token_id,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    return model_class(config)


def standard_and_shared(net, tokenized, indices, *, pad_token_id, pack=False, device="cpu"):
    """(rewards, loss, gradients) of the standard forward and of the shared-prompt forward."""
    import torch

    from rmrun.data import collate
    from rmrun.data.share import collate_shared, shared_prefix_lengths
    from rmrun.model.model import RewardReader
    from rmrun.train.loss import pair_losses

    reader = RewardReader(net)
    results = []
    for shared in (False, True):
        net.zero_grad()
        if shared:
            batch = collate_shared(
                tokenized, indices, prefix=shared_prefix_lengths(tokenized), pad_token_id=pad_token_id, pack=pack
            )
            chosen, rejected = reader.shared_prompt(net, batch, device=torch.device(device))
        else:
            batch = collate(tokenized, indices, pad_token_id=pad_token_id)
            rewards = reader(net, batch["input_ids"].to(device), batch["attention_mask"].to(device))
            chosen, rejected = rewards[: len(indices)], rewards[len(indices) :]
        loss = pair_losses("log_sig", chosen, rejected, margin=0.0).mean()
        loss.backward()
        grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
        results.append((torch.cat([chosen, rejected]).detach(), loss.detach(), grads))
    return results


def assert_equivalent(standard, shared):
    """Equal rewards and loss (within REWARD_TOLERANCE) and gradients (GRADIENT_TOLERANCE, relative)."""
    import torch

    (rewards_a, loss_a, grads_a), (rewards_b, loss_b, grads_b) = standard, shared
    assert torch.allclose(rewards_a, rewards_b, rtol=0, atol=REWARD_TOLERANCE), (rewards_a - rewards_b).abs().max()
    assert torch.allclose(loss_a, loss_b, rtol=0, atol=REWARD_TOLERANCE)
    assert set(grads_a) == set(grads_b) and grads_a
    for name, grad in grads_a.items():
        error = (grad - grads_b[name]).norm() / grad.norm().clamp_min(1e-12)
        assert error < GRADIENT_TOLERANCE, f"{name}: relative gradient difference {error:.2e}"
