"""TRL's RewardTrainer on the benchmark's tokenized pairs, timed per optimizer step.

Runs in the separate TRL virtualenv (``benchmarks/trl_venv.sh``), never in rmrun's: it imports
neither rmrun nor ColossalAI. ``benchmarks/trl_side_by_side.py`` writes its inputs (the token ids
rmrun trains on, the model config) and starts it between rmrun's own measurements.

    .venv-trl/bin/python benchmarks/trl_reward.py INPUT.json OUTPUT.json
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time


def main(source: str, target: str) -> None:
    with open(source) as f:
        job = json.load(f)
    import torch

    torch.set_num_threads(job["threads"])
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedTokenizerFast, TrainerCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    config = AutoConfig.from_pretrained(job["model_dir"], num_labels=1)
    config.vocab_size, config.pad_token_id = job["vocab_size"], job["pad_token_id"]
    torch.manual_seed(job["seed"])
    model = AutoModelForSequenceClassification.from_config(config, torch_dtype=torch.float32)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(job["tokenizer_dir"])
    tokenizer.pad_token_id = job["pad_token_id"]
    columns = {"chosen_ids": job["chosen"], "rejected_ids": job["rejected"]}
    if job["sampling"] == "group_by_length":
        # TRL's reward trainer cannot infer a pair's length (no input_ids column): a user who groups
        # by length gives it one. The longer side, since the collator pads both sides to it.
        columns["length"] = [max(len(c), len(r)) for c, r in zip(job["chosen"], job["rejected"])]
    dataset = Dataset.from_dict(columns)

    class StepClock(TrainerCallback):
        """Wall and process CPU time of each optimizer step (data loading included, as for rmrun)."""

        def __init__(self):
            self.steps = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            wall, cpu = self.started
            self.steps.append({"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu})

    clock = StepClock()
    collated = []  # (non-padding tokens, padded positions) of every batch TRL's own collator built
    padder = DataCollatorForPreference(pad_token_id=job["pad_token_id"])

    def collate(examples):
        batch = padder(examples)
        collated.append((int(batch["attention_mask"].sum()), int(batch["attention_mask"].numel())))
        return batch

    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(
            output_dir=out,
            per_device_train_batch_size=job["batch_size"],
            max_steps=job["steps"],
            learning_rate=job["lr"],
            weight_decay=job["weight_decay"],
            max_grad_norm=job["grad_clip"],
            lr_scheduler_type="constant",
            warmup_steps=0,
            seed=job["seed"],
            max_length=None,
            use_cpu=True,
            dataloader_num_workers=0,
            report_to=[],
            save_strategy="no",
            logging_steps=10**9,
            disable_tqdm=True,
            train_sampling_strategy=job["sampling"],
            # the length column must survive to the sampler
            remove_unused_columns=job["sampling"] != "group_by_length",
            # None: TRL's own defaults (bf16 on, gradient checkpointing on)
            **{k: job[k] for k in ("bf16", "gradient_checkpointing") if job.get(k) is not None},
        )
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            data_collator=collate,
            callbacks=[clock],
        )
        trainer.train()
        precision = {
            "bf16": bool(trainer.args.bf16),
            "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        }
    import transformers
    import trl

    with open(target, "w") as f:
        json.dump(
            {
                "steps": clock.steps,
                "batches": collated,
                "settings": precision,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "versions": {
                    "trl": trl.__version__,
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                },
            },
            f,
        )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1], sys.argv[2])
