"""The few-shot peer as its users run it: SetFit 1.2.0 (its own virtual environment, see few_shot.py) with its
defaults for few-shot text classification — batch 16, 20 iterations of pair generation, 1 epoch, logistic-regression
head — on the same sentence encoder and the same sampled rows. One `SETFIT-RESULT {json}` line per job on stdout.

Usage (inside the SetFit venv): python setfit_peer.py JOBS.json, JOBS a list of
{"model", "train": [[text, label], ...], "test": [[text, label], ...], "out", "max_steps"}."""

from __future__ import annotations

import json
import sys
import time

RESULT = "SETFIT-RESULT "
"""Marks the result lines: the trainer prints its own dicts of losses on stdout too."""


def run(job: dict) -> dict:
    import numpy as np
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.metrics import f1_score

    started = time.perf_counter()
    texts, labels = zip(*job["train"], strict=True)
    train = Dataset.from_dict({"text": list(texts), "label": list(labels)})
    model = SetFitModel.from_pretrained(job["model"])
    arguments = TrainingArguments(
        batch_size=16,
        num_iterations=20,
        num_epochs=1,
        max_steps=job.get("max_steps") or -1,
        seed=job["seed"],
        output_dir=job["out"] + "-checkpoints",
        save_strategy="no",
        report_to="none",
        show_progress_bar=False,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=train)
    trainer.train()
    model.save_pretrained(job["out"])
    wall = time.perf_counter() - started
    test_texts, test_labels = zip(*job["test"], strict=True)
    predictions = np.asarray(model.predict(list(test_texts), batch_size=64))
    truth = np.asarray(test_labels)
    steps = trainer.state.global_step if getattr(trainer, "state", None) else None
    return {
        "wall_s": round(wall, 2),
        "test_accuracy": float((predictions == truth).mean()),
        "test_f1_macro": float(f1_score(truth, predictions, average="macro")),
        "steps": steps,
        "train_rows": len(train),
    }


if __name__ == "__main__":
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for job in json.loads(open(sys.argv[1], encoding="utf-8").read()):
        print(RESULT + json.dumps({"key": job["key"], **run(job)}), flush=True)
