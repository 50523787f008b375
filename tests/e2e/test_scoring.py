"""``rmrun score`` and ``rmrun eval`` on an export reproduce the training-time evaluation.

One small run is trained once for the module; every test then uses its export as users do,
through the ``rmrun`` command.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.helpers import child_env, rmrun, small_recipe

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    recipe = small_recipe(
        root,
        train_pairs=96,
        eval_pairs=40,
        # reward_stats_pairs: the statistics on a sample, 40 of the 96 training pairs.
        extra="[schedule]\nmax_epochs = 2\nbatch_size = 8\n[output]\ncolossalchat = true\nreward_stats_pairs = 40\n",
    )
    done = rmrun("run", recipe)
    assert done.returncode == 0, done.stderr[-3000:]
    export = root / "state" / "export"
    return {
        "root": root,
        "recipe": recipe,
        "export": str(export),
        "eval_file": str(root / "eval.jsonl"),
        "train_file": str(root / "train.jsonl"),
        "eval_json": json.loads((export / "eval.json").read_text())["final"],
        "config": json.loads((export / "config.json").read_text()),
    }


def _score(trained, *files, out_name="scores.jsonl", nproc=1):
    out = trained["root"] / out_name
    done = rmrun("score", trained["export"], *files, "--out", str(out), nproc=nproc)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_score_reproduces_the_training_time_rewards(trained):
    lines = _score(trained, trained["eval_file"])
    final = trained["eval_json"]
    assert len(lines) == final["pairs"] == 40
    assert [line["row"] for line in lines] == list(range(40))
    assert all(line["source"] == f"{trained['eval_file']}:{i + 1}" for i, line in enumerate(lines))
    chosen = [line["chosen"] for line in lines]
    rejected = [line["rejected"] for line in lines]
    assert all(math.isclose(line["margin"], line["chosen"] - line["rejected"], abs_tol=1e-9) for line in lines)
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(lines)
    assert accuracy == final["accuracy"]
    assert math.isclose(sum(chosen) / len(chosen), final["chosen_reward"], abs_tol=TOLERANCE)
    assert math.isclose(sum(rejected) / len(rejected), final["rejected_reward"], abs_tol=TOLERANCE)


def test_a_state_root_scores_with_the_export_it_published(trained):
    by_export = _score(trained, trained["eval_file"], out_name="by_export.jsonl")
    out = trained["root"] / "by_state.jsonl"
    done = rmrun("score", str(trained["root"] / "state"), trained["eval_file"], "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert [json.loads(line) for line in out.read_text().splitlines()] == by_export


def test_eval_reproduces_the_training_time_report(trained):
    out = trained["root"] / "report.json"
    done = rmrun("eval", trained["export"], trained["eval_file"], "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    final = trained["eval_json"]
    for key in ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward", "reward_std", "longer_wins_accuracy"):
        assert math.isclose(report[key], final[key], rel_tol=TOLERANCE, abs_tol=TOLERANCE), key
    assert [(b["min_tokens"], b["pairs"], b["accuracy"]) for b in report["accuracy_by_length"]] == [
        (b["min_tokens"], b["pairs"], b["accuracy"]) for b in final["accuracy_by_length"]
    ]
    assert 0 <= report["ece"] <= 1 and 0 <= report["brier"] <= 1
    assert sum(b["count"] for b in report["calibration"]) == 2 * report["pairs"]
    assert "accuracy" in done.stdout and "ECE" in done.stdout


def test_config_reward_stats_match_the_scored_training_pairs_of_their_sample(trained):
    from rmrun.recipe import load_recipe
    from rmrun.train.sampler import reward_stats_sample

    config = trained["config"]
    assert config["normalize_reward"] is False
    lines = _score(trained, trained["train_file"], out_name="train_scores.jsonl")
    assert len(lines) == 96
    seed = load_recipe(trained["recipe"]).run.seed
    sample = [lines[i] for i in reward_stats_sample(seed=seed, num_pairs=96, num_samples=40)]
    rewards = [line["chosen"] for line in sample] + [line["rejected"] for line in sample]
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    assert math.isclose(config["mean"], mean, abs_tol=1e-4)
    assert math.isclose(config["std"], std, rel_tol=1e-4)


def test_the_export_states_the_sample_beside_the_reward_stats(trained):
    from pathlib import Path

    stats = json.loads((Path(trained["export"]) / "rmrun.json").read_text())["reward_stats"]
    assert (stats["pairs"], stats["of"], stats["data"]) == (40, 96, "train")
    assert (stats["mean"], stats["std"]) == (trained["config"]["mean"], trained["config"]["std"])
    card = (Path(trained["export"]) / "README.md").read_text()
    assert "Rewards over 40 of the 96 training pairs (a uniform sample drawn from `run.seed`)" in card


def test_single_responses_score_like_the_chosen_side_of_a_pair(trained, tmp_path):
    from rmrun.data import read_pairs

    pairs = list(read_pairs([trained["eval_file"]], format="colossalchat"))[:5]
    singles = tmp_path / "singles.jsonl"
    with open(singles, "w") as f:
        for pair in pairs:
            prompt = [{"role": m.role, "content": m.content} for m in pair.prompt]
            f.write(json.dumps({"prompt": prompt, "response": pair.chosen[-1].content, "id": len(prompt)}) + "\n")
    scored_pairs = _score(trained, trained["eval_file"], out_name="pairs.jsonl")[:5]
    scored_singles = _score(trained, str(singles), out_name="singles_out.jsonl")
    assert [line["reward"] for line in scored_singles] == pytest.approx([p["chosen"] for p in scored_pairs], abs=1e-5)
    assert "chosen" not in scored_singles[0] and "id" in scored_singles[0]


def test_subsets_give_a_per_subset_table(trained, tmp_path):
    bench = tmp_path / "bench.jsonl"
    with open(trained["eval_file"]) as f, open(bench, "w") as out:
        for i, line in enumerate(f):
            row = json.loads(line)
            prompt = "\n".join(m["content"] for m in row["context"])
            out.write(
                json.dumps(
                    {
                        "prompt": prompt,
                        "chosen": row["chosen"][0]["content"],
                        "rejected": row["rejected"][0]["content"],
                        "subset": "even" if i % 2 == 0 else "odd",
                    }
                )
                + "\n"
            )
    out = tmp_path / "report.json"
    done = rmrun("eval", trained["export"], str(bench), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["subsets"]) == {"even", "odd"}
    assert sum(s["pairs"] for s in report["subsets"].values()) == report["pairs"] == 40
    weighted = sum(s["pairs"] * s["accuracy"] for s in report["subsets"].values()) / report["pairs"]
    assert math.isclose(weighted, report["accuracy"])
    assert "per subset:" in done.stdout and "even" in done.stdout


@pytest.mark.parametrize(
    "content,where",
    [
        ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": 3, "rejected": "b"}\n', ":2"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b"}\nnot json\n', ":2"),
        ('{"prompt": "p", "response": ""}\n', ":1"),
        ("[1, 2]\n", ":1"),
        ('{"prompt": [{"role": "assistant", "content": "x"}], "response": "y"}\n', ":1"),
    ],
)
def test_bad_rows_are_one_line_errors_with_file_and_line(trained, tmp_path, content, where):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    for command in (("score", "--bad-rows", "error"), ("eval",)):
        done = rmrun(*command, trained["export"], str(bad))
        assert done.returncode == 2, (command, done.stderr[-2000:])
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr
        assert f"{bad}{where}" in lines[0]


def test_a_missing_or_foreign_model_is_a_one_line_error(trained, tmp_path):
    for model, expected in (
        (str(tmp_path / "nowhere"), "no such export directory"),
        (str(tmp_path), "not a model directory (no config.json)"),
    ):
        done = rmrun("score", model, trained["eval_file"])
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [f"rmrun: {model}: {expected}"]


def test_missing_data_file_is_a_one_line_error(trained, tmp_path):
    done = rmrun("eval", trained["export"], str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "file not found" in done.stderr


@pytest.mark.slow
def test_torchrun_shards_cover_every_row_once(trained):
    one = _score(trained, trained["eval_file"], trained["train_file"], out_name="one.jsonl")
    two = _score(trained, trained["eval_file"], trained["train_file"], out_name="two.jsonl", nproc=2)
    assert [line["row"] for line in two] == list(range(len(one))) == list(range(40 + 96))
    assert [line["source"] for line in two] == [line["source"] for line in one]
    for a, b in zip(one, two):
        assert a["chosen"] == pytest.approx(b["chosen"], abs=1e-5)
        assert a["rejected"] == pytest.approx(b["rejected"], abs=1e-5)


def test_the_export_has_a_model_card(trained):
    from pathlib import Path

    card = (Path(trained["export"]) / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers" in front and "pipeline_tag: text-classification" in front
    assert "- reward-model" in front
    accuracy = trained["eval_json"]["accuracy"]
    assert f"| accuracy | {accuracy:.4f} |" in card
    assert f"mean {trained['config']['mean']:.4f}" in card


def test_colossalchat_layout_round_trips_into_its_reward_model(trained):
    """The file loads with ColossalAI's own checkpoint IO into ColossalChat's RewardModel layout
    (AutoModel backbone as ``model``, ``value_head``) and gives rmrun's rewards."""
    import os

    import torch
    from colossalai.checkpoint_io import GeneralCheckpointIO
    from transformers import AutoModel

    from rmrun.data import collate, tokenize_pairs
    from rmrun.serve.handoff import COLOSSALCHAT_FILE
    from rmrun.serve.scoring import open_export, read_rows

    path = os.path.join(trained["export"], COLOSSALCHAT_FILE)
    assert "modeling" in path  # train_ppo.py loads --rm_checkpoint_path with booster.load_model only then

    class RewardModel(torch.nn.Module):  # coati.models.RewardModel's parameters and forward
        def __init__(self, pretrained):
            super().__init__()
            self.model = AutoModel.from_pretrained(pretrained)
            self.value_head = torch.nn.Linear(self.model.config.hidden_size, 1)

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids, attention_mask=attention_mask)["last_hidden_state"]
            last = torch.max(attention_mask * torch.arange(input_ids.size(1)), dim=1)[0]
            return self.value_head(hidden[torch.arange(hidden.size(0)), last]).squeeze(-1)

    reward_model = RewardModel(trained["export"]).eval()
    torch.nn.init.normal_(reward_model.value_head.weight)
    GeneralCheckpointIO().load_model(reward_model, path, strict=True)
    assert torch.equal(reward_model.value_head.bias, torch.zeros(1))

    export = open_export(trained["export"])
    rows = read_rows([trained["eval_file"]], format="colossalchat")[:8]
    data = export.contract["data"]
    tokenized = tokenize_pairs(
        [r.pair for r in rows],
        export.tokenizer,
        max_length=data["max_length"],
        overflow=data["overflow"],
        template=export.template,
        family=export.family,
    )
    batch = collate(tokenized, list(range(len(rows))), pad_token_id=export.tokenizer.pad_token_id)
    with torch.no_grad():
        theirs = reward_model(batch["input_ids"], batch["attention_mask"])
    ours = _score(trained, trained["eval_file"], out_name="handoff.jsonl")[:8]
    expected = [line["chosen"] for line in ours] + [line["rejected"] for line in ours]
    assert theirs.tolist() == pytest.approx(expected, abs=1e-5)


def test_scores_into_a_closed_pipe_end_quietly(trained):
    """``rmrun score MODEL DATA | head``: the reader goes after a few lines; no traceback, exit 0."""
    child = subprocess.Popen(
        [sys.executable, "-m", "rmrun", "score", trained["export"], trained["train_file"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert child.stdout.readline().startswith(b"{")  # it scored and wrote its first line
    child.stdout.close()
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr.decode()[-2000:]
    assert "Traceback" not in stderr.decode() and "Broken pipe" not in stderr.decode()
