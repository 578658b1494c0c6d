"""Ants/bees with the offline ImageNet EfficientNet-Lite0: val accuracy (last epoch and best) and wall time per
strategy, each run the bundled recipe as `accelerate launch` would run it; and the frozen head three ways: augmented
(the backbone runs every epoch), unaugmented on cached features (encoded once), and an L-BFGS head on them. See
benchmarks/README.md."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sst2_strategies import ROOT, child_env, machine, run_child  # noqa: E402

ANCHOR = "PyTorch transfer-learning tutorial, ImageNet ResNet-18: fine-tuned 0.94, fixed feature extractor 0.95-0.96"
LAUNCH = ["accelerate", "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no"]
LAUNCH += ["--dynamo_backend", "no", "-m", "hf_transfer", "train"]
NO_AUGMENTATION = ["data.augmentation.random_resized_crop=false", "data.augmentation.horizontal_flip=false"]
VARIANTS = {  # name -> (recipe strategy, overrides); the bundled recipes are the strategies' own names
    "head-cached": ("head", NO_AUGMENTATION),
    "head-lbfgs": ("head", [*NO_AUGMENTATION, "strategy.head.type=lbfgs"]),
}
"""The frozen head on features encoded once: training images unaugmented (a crop drawn per epoch cannot be cached),
each run on its own empty feature cache, so encoding is inside the measured time."""


def run_once(workdir: Path, strategy: str, seed: int, env: dict[str, str]) -> dict[str, Any]:
    out = workdir / f"{strategy}-{seed}"
    kind, overrides = VARIANTS.get(strategy, (strategy, []))
    recipe = ROOT / "recipes" / f"ants-bees-effnet-{kind}.yaml"
    command = LAUNCH + [str(recipe), *overrides, f"training.seed={seed}", "--output-dir", str(out)]
    env = {**env, "HF_TRANSFER_FEATURE_CACHE": str(workdir / f"features-{strategy}-{seed}")}
    peak_mb, process_s = run_child(command, workdir / f"{strategy}-{seed}.log", env)
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {
        "strategy": strategy,
        "seed": seed,
        "val_accuracy_last_epoch": log[-1]["validation_accuracy"],
        "val_accuracy_best": max(entry["validation_accuracy"] for entry in log),
        "val_accuracy_saved_model": metrics["validation"]["accuracy"],  # the folder's model, scored again
        "best_epoch": metrics["train"]["best_epoch"],
        "epochs": len(log),
        "head_C": metrics["train"].get("head_C"),
        "process_s": round(process_s, 1),
        "train_s": metrics["train"]["train_s"],
        "peak_rss_mb": round(peak_mb, 1),
        "trainable_params": metrics["train"]["trainable_params"],
        "skipped": {k: v for k, v in metrics["train"].items() if k.startswith("skipped_")},
    }


def markdown(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| strategy | val acc, last epoch | val acc, best epoch | wall s (launch to exit) | peak RSS MB | trainable |",
        "|---|---|---|---|---|---|",
    ]
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == strategy]
        med = {k: statistics.median(r[k] for r in mine) for k in ("val_accuracy_last_epoch", "val_accuracy_best")}
        wall = statistics.median(r["process_s"] for r in mine)
        rss = statistics.median(r["peak_rss_mb"] for r in mine)
        lines.append(
            f"| {strategy} | {med['val_accuracy_last_epoch']:.3f} | {med['val_accuracy_best']:.3f} | {wall:.0f} | "
            f"{rss:.0f} | {mine[0]['trainable_params']:,} |"
        )
    return "\n".join(lines) + f"\n\nAnchor: {ANCHOR}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strategies", default="head,full,lora", help=f"bundled recipes and {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ants-bees-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = child_env(workdir)
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for strategy in args.strategies.split(","):
            runs.append(run_once(workdir, strategy, seed, env))
            print(json.dumps(runs[-1]), flush=True)
            if args.json:  # after every run: an interrupted benchmark keeps what it measured
                args.json.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=2) + "\n")
    table = markdown(runs)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
