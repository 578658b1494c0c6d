"""CoNLL-2003 NER with all-MiniLM-L6-v2: test entity F1 per strategy (head, lora, full; medians over seeds) and
training throughput (alternating repeats on a fixed slice), hf_transfer beside the run_ner-style Trainer peer
(benchmarks/ner_trainer_peer.py) at identical settings. See benchmarks/README.md and RESULTS.md.

    python benchmarks/ner.py --seeds 1 2 3 --budget-min 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sst2_strategies import child_env, machine, run_child

from hf_transfer.recipe import Recipe, load_recipe
from hf_transfer.strategies import DEFAULT_LORA_R

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
STRATEGIES = ("full", "lora", "head")
# One epoch on the full train set fits the budget of a shared 2-core machine; the learning rates are each strategy's
# usual one for a single epoch (LoRA higher, the head on frozen states higher still), the same for both runners.
SETTINGS: dict[str, list[str]] = {
    "full": ["training.epochs=1", "training.lr=1e-4"],
    "lora": ["training.epochs=1", "training.lr=1e-3"],
    "head": ["training.epochs=3", "training.lr=5e-3"],
}
BERT_BASE_F1 = 0.924
"""BERT-base on the CoNLL-2003 test set (Devlin et al. 2019, Table 3), for scale."""


def peer_arguments(recipe: Recipe) -> list[str]:
    """The peer's command line from the resolved recipe, so the two runners cannot drift apart."""
    t, s = recipe.training, recipe.strategy
    fixed = {"training.scheduler": (t.scheduler, "linear"), "training.grad_accum": (t.grad_accum, 1)}
    for key, (value, expected) in fixed.items():
        if value != expected:
            raise SystemExit(f"the Trainer peer only supports {key} = {expected!r}; the recipe has {value!r}")
    arguments = [f"--strategy={s.kind}", f"--epochs={t.epochs}", f"--lr={t.lr}", f"--warmup={t.warmup}"]
    arguments += [f"--weight-decay={t.weight_decay}", f"--batch-size={t.batch_size}", f"--seed={t.seed}"]
    arguments.append(f"--max-length={recipe.data.max_length}")
    if s.kind == "lora":  # the recipe's adapter; hf_transfer's defaults where it leaves r or alpha out
        r = s.r or DEFAULT_LORA_R
        arguments += [f"--lora-r={r}", f"--lora-alpha={s.alpha or 2 * r}", f"--lora-dropout={s.dropout}"]
    if t.max_train_samples:
        arguments.append(f"--max-train-samples={t.max_train_samples}")
    if t.max_eval_samples:
        arguments.append(f"--max-eval-samples={t.max_eval_samples}")
    if t.group_by_length:
        arguments.append("--group-by-length")
    return arguments


def run_one(workdir: Path, runner: str, strategy: str, overrides: list[str], tag: str) -> dict[str, Any]:
    """One training as its user runs it, in a child process; the figures the tables report."""
    recipe_path = ROOT / "recipes" / f"conll2003-minilm-{strategy}.yaml"
    out = workdir / f"{tag}-{runner}-{strategy}"
    if runner == "ours":
        command = [sys.executable, "-m", "hf_transfer", "train", str(recipe_path), *overrides]
        command += ["--output-dir", str(out), "--overwrite"]
    else:
        command = [sys.executable, str(BENCHMARKS / "ner_trainer_peer.py"), "--json", str(out.with_suffix(".json"))]
        command += peer_arguments(load_recipe(recipe_path, overrides))
    peak_rss_mb, process_s = run_child(command, out.with_suffix(".log"), child_env(workdir))
    path = out / "metrics.json" if runner == "ours" else out.with_suffix(".json")
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return {
        "runner": runner,
        "strategy": strategy,
        "overrides": overrides,
        "validation_f1": metrics["validation"]["f1"],
        "test_f1": metrics["test"]["f1"],
        "test_precision": metrics["test"]["precision"],
        "test_recall": metrics["test"]["recall"],
        "test_accuracy": metrics["test"]["accuracy"],
        "train_s": metrics["train"]["train_s"],
        "samples_per_s": metrics["train"]["samples_per_s"],
        "trainable_params": metrics["train"]["trainable_params"],
        "peak_rss_mb": round(peak_rss_mb, 1),
        "process_s": round(process_s, 1),
    }


def throughput(workdir: Path, report: dict[str, Any], samples: int, repeats: int, save) -> None:
    """`full` on a fixed slice, the two runners alternating, `repeats` times each: the ratio of median samples/s."""
    overrides = ["training.epochs=1", f"training.max_train_samples={samples}", "training.max_eval_samples=200"]
    rows = report.setdefault("throughput_runs", [])
    for repeat in range(repeats):
        for runner in ("ours", "trainer") if repeat % 2 == 0 else ("trainer", "ours"):
            rows.append(run_one(workdir, runner, "full", [*overrides, "training.lr=1e-4"], f"speed{repeat}"))
            save()
    ours = statistics.median(r["samples_per_s"] for r in rows if r["runner"] == "ours")
    peer = statistics.median(r["samples_per_s"] for r in rows if r["runner"] == "trainer")
    report["throughput"] = {"samples": samples, "repeats": repeats, "ours": ours, "trainer": peer}
    report["throughput"]["ratio_ours_trainer"] = round(ours / peer, 3)
    save()


def accuracy(
    workdir: Path,
    report: dict[str, Any],
    seeds: list[int],
    deadline: float,
    limits: list[str],
    save,
    runners: tuple[str, ...] = ("ours", "trainer"),
    strategies: tuple[str, ...] = STRATEGIES,
) -> None:
    """The first seed on both runners, then hf_transfer's other seeds, then the peer's (full and LoRA); a run that
    would end past the deadline is not started."""
    rows = report.setdefault("accuracy_runs", [])
    took: dict[tuple[str, str], float] = {}
    order = [(seeds[0], s, r) for s in STRATEGIES for r in ("ours", "trainer")]
    order += [(seed, s, "ours") for seed in seeds[1:] for s in STRATEGIES]
    order += [(seed, s, "trainer") for seed in seeds[1:] for s in ("full", "lora")]
    done = {(row["seed"], row["strategy"], row["runner"]) for row in rows}  # --resume: runs already recorded
    for seed, strategy, runner in [item for item in order if item[2] in runners and item[1] in strategies]:
        if (seed, strategy, runner) in done:
            continue
        expected = took.get((runner, strategy), 0.0)
        if time.time() + expected > deadline:
            report.setdefault("not_run", []).append(f"{runner} {strategy} seed {seed} (budget)")
            save()
            continue
        overrides = [*SETTINGS[strategy], *limits, f"training.seed={seed}"]
        started = time.time()
        rows.append(run_one(workdir, runner, strategy, overrides, f"seed{seed}") | {"seed": seed})
        took[(runner, strategy)] = time.time() - started
        save()


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Medians over seeds per runner and strategy."""
    table: dict[str, Any] = {}
    for row in report.get("accuracy_runs", []):
        table.setdefault(f"{row['runner']} {row['strategy']}", []).append(row)
    return {
        key: {
            "seeds": [r["seed"] for r in rows],
            "test_f1": statistics.median(r["test_f1"] for r in rows),
            "validation_f1": statistics.median(r["validation_f1"] for r in rows),
            "samples_per_s": statistics.median(r["samples_per_s"] for r in rows),
            "train_s": statistics.median(r["train_s"] for r in rows),
            "trainable_params": rows[0]["trainable_params"],
        }
        for key, rows in table.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budget-min", type=float, default=50, help="no new accuracy run starts past this")
    parser.add_argument("--train-samples", type=int, help="a seeded subset of train (default: all 14,041)")
    parser.add_argument("--eval-samples", type=int, help="seeded subsets of validation and test (default: all)")
    parser.add_argument("--throughput-samples", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3, help="throughput repeats per runner (0: none)")
    parser.add_argument("--runners", nargs="+", choices=["ours", "trainer"], default=["ours", "trainer"])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ner-bench"))
    parser.add_argument("--json", type=Path, default=BENCHMARKS / "results" / "ner_conll2003.json")
    parser.add_argument("--resume", action="store_true", help="keep the accuracy runs --json already records")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict[str, Any] = {
        "command": "python benchmarks/ner.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine_at_start": machine(),
        "settings": {k: v for k, v in SETTINGS.items()},
        "bert_base_test_f1": BERT_BASE_F1,
    }
    if args.resume and args.json.is_file():
        earlier = json.loads(args.json.read_text(encoding="utf-8"))
        report["accuracy_runs"] = earlier.get("accuracy_runs", [])
        report["resumed_from"] = earlier.get("command")

    def save() -> None:
        report["summary"] = summary(report)
        report["elapsed_s"] = round(time.time() - started, 1)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    if args.repeats:  # --repeats 0: the accuracy runs alone
        throughput(args.workdir, report, args.throughput_samples, args.repeats, save)
    limits = [f"training.max_train_samples={args.train_samples}"] if args.train_samples else []
    limits += [f"training.max_eval_samples={args.eval_samples}"] if args.eval_samples else []
    report["limits"] = limits
    accuracy(
        args.workdir,
        report,
        args.seeds,
        started + 60 * args.budget_min,
        limits,
        save,
        tuple(args.runners),
        tuple(args.strategies),
    )
    report["machine_at_end"] = machine()
    save()
    print(json.dumps(report["summary"], indent=2))
    print(json.dumps(report.get("throughput"), indent=2))


if __name__ == "__main__":
    main()
