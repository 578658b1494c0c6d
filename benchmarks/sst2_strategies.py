"""SST-2 accuracy per strategy and training throughput, hf_transfer vs a plain Trainer: see benchmarks/README.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from hf_transfer.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
STRATEGIES = ["head", "partial", "lora", "full"]
ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_TRANSFER_MIRRORS": str(BENCHMARKS / "mirrors.yaml"),
}
RUNNERS = ("ours", "trainer")


def machine() -> dict[str, Any]:
    """What the figures were measured on; the load average matters on a shared machine."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": names[0] if names else platform.processor(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def child_env(workdir: Path) -> dict[str, str]:
    """The environment of a benchmark's child processes: offline defaults unless set, HF_HOME in `workdir`."""
    env = {**os.environ}
    for key, value in ENV_DEFAULTS.items():
        env.setdefault(key, value)
    env.setdefault("HF_HOME", str(workdir / "hf_home"))
    return env


def run_child(command: list[str], log: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run one training process; return its own peak RSS in MB and its wall time in seconds."""
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        # wait4 reports this one child's rusage; RUSAGE_CHILDREN keeps the maximum over every child so far.
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if process.returncode:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:])
        raise RuntimeError(f"exit {process.returncode}: {' '.join(command)}\n--- last lines of {log} ---\n{tail}")
    return usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024), elapsed


def flatten(metrics: dict[str, Any], peak_rss_mb: float, process_s: float) -> dict[str, float]:
    """The figures the tables report, from hf_transfer's metrics.json or the peer's JSON (same layout)."""
    return {
        "dev_accuracy": metrics["validation"]["accuracy"],
        "test_accuracy": metrics["test"]["accuracy"],
        "wall_s": metrics["train"]["wall_s"],
        "train_s": metrics["train"]["train_s"],
        "samples_per_s": metrics["train"]["samples_per_s"],
        "trainable_params": metrics["train"]["trainable_params"],
        "peak_rss_mb": round(peak_rss_mb, 1),
        "process_s": round(process_s, 1),
    }


def peer_arguments(recipe: Recipe) -> list[str]:
    """The peer's command-line settings, taken from the resolved recipe so the two cannot drift apart."""
    t, s = recipe.training, recipe.strategy
    # The peer hard-codes what it cannot take as arguments; refuse a recipe that differs there.
    fixed = {
        "training.scheduler": (t.scheduler, "linear"),
        "training.grad_accum": (t.grad_accum, 1),
        "training.max_grad_norm": (t.max_grad_norm, 1.0),
        "strategy.target_modules": (s.target_modules or "all-linear", "all-linear"),
    }
    for key, (value, expected) in fixed.items():
        if value != expected:
            raise SystemExit(f"the Trainer peer only supports {key} = {expected!r}; the recipe has {value!r}")
    if t.warmup >= 1:
        raise SystemExit("the Trainer peer takes training.warmup as a fraction of all steps (< 1)")
    arguments = [f"--strategy={s.kind}", f"--epochs={t.epochs}", f"--lr={t.lr}", f"--warmup={t.warmup}"]
    arguments += [f"--weight-decay={t.weight_decay}", f"--batch-size={t.batch_size}", f"--seed={t.seed}"]
    arguments += [f"--max-length={recipe.data.max_length}", f"--layers={s.layers or 3}", f"--lora-r={s.r}"]
    arguments += [f"--lora-alpha={s.alpha or 2 * s.r}", f"--lora-dropout={s.dropout}"]
    if t.max_train_samples:
        arguments.append(f"--max-train-samples={t.max_train_samples}")
    if t.max_eval_samples:
        arguments.append(f"--max-eval-samples={t.max_eval_samples}")
    if t.group_by_length:
        arguments.append("--group-by-length")
    return arguments


class Bench:
    """Runs hf_transfer and the peer as child processes with identical settings, one at a time."""

    def __init__(self, workdir: Path, overrides: list[str], keep: bool) -> None:
        self.workdir, self.overrides, self.keep = workdir, overrides, keep
        self.count = len(list(workdir.glob("[0-9][0-9][0-9]-*.log")))  # a resumed benchmark keeps earlier logs
        self.env = child_env(workdir)

    def wait_while_paused(self) -> None:
        """Between runs, wait while `<workdir>/PAUSE` exists: frees the machine for another measurement without
        stopping a run midway (which would spoil its wall time and samples/s)."""
        pause = self.workdir / "PAUSE"
        if pause.exists():
            print(f"paused: {pause} exists", flush=True)
            while pause.exists():
                time.sleep(5)

    def run(self, runner: str, strategy: str, overrides: list[str]) -> dict[str, float]:
        self.wait_while_paused()
        load_at_start = os.getloadavg()[0]
        self.count += 1
        name = f"{self.count:03d}-{runner}-{strategy}"
        out = self.workdir / name
        recipe_path = ROOT / "recipes" / f"sst2-minilm-{strategy}.yaml"
        overrides = self.overrides + overrides
        if runner == "ours":
            command = [sys.executable, "-m", "hf_transfer", "train", str(recipe_path), *overrides]
            command += ["--output-dir", str(out)]
            metrics_file = out / "metrics.json"
        else:
            command = [sys.executable, str(BENCHMARKS / "trainer_peer.py"), "--json", str(out.with_suffix(".json"))]
            command += peer_arguments(load_recipe(recipe_path, overrides))
            metrics_file = out.with_suffix(".json")
        peak_rss_mb, process_s = run_child(command, out.with_suffix(".log"), self.env)
        row = flatten(json.loads(metrics_file.read_text(encoding="utf-8")), peak_rss_mb, process_s)
        row["load_at_start"] = round(load_at_start, 2)
        if not self.keep:
            shutil.rmtree(out, ignore_errors=True)  # saved weights and checkpoints: ~100 MB a run
        print(
            f"[{name}] {' '.join(overrides)}: dev {row['dev_accuracy']:.4f} test {row['test_accuracy']:.4f} "
            f"{row['samples_per_s']:.1f} samples/s {row['peak_rss_mb']:.0f} MB {row['process_s']:.0f} s",
            flush=True,
        )
        return row


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0] if key != "seed"}


def accuracy(
    bench: Bench,
    strategies: list[str],
    seeds: list[int],
    sizes: list[str],
    save: Callable[[dict], None],
    peer_strategies: list[str],
    earlier: dict[str, Any],
) -> dict[str, Any]:
    """Each strategy's recipe as shipped, ours then the peer (alternating, so load drift hits both).

    Seeds are the outer loop and the report is saved after every run: a long benchmark stopped early still leaves
    every strategy measured on the seeds it finished. Runs found in `earlier` (a saved report's accuracy section) are
    kept, not repeated; the peer runs only for `peer_strategies`.
    """
    runs: dict[str, dict[str, list]] = {strategy: {runner: [] for runner in RUNNERS} for strategy in strategies}
    for strategy, by_runner in earlier.items():
        for runner, result in by_runner.items():
            if strategy in runs:
                runs[strategy][runner] = list(result["runs"])
    results: dict[str, Any] = {}
    for seed in seeds:
        for strategy in strategies:
            for runner in RUNNERS:
                if runner == "trainer" and strategy not in peer_strategies:
                    continue
                if any(row["seed"] == seed for row in runs[strategy][runner]):
                    continue
                row = bench.run(runner, strategy, [f"training.seed={seed}", *sizes])
                runs[strategy][runner].append({"seed": seed, **row})
            results[strategy] = {
                runner: {
                    "median": medians(rows),
                    "runs": rows,
                    "seeds": [row["seed"] for row in rows],
                }
                for runner, rows in runs[strategy].items()
                if rows
            }
            save(results)
    return results


def throughput(bench: Bench, samples: int, repeats: int, eval_samples: int) -> dict[str, Any]:
    """Full fine-tuning on a fixed slice, 1 epoch: ours vs the peer with grouping off, then ours with it on.

    The three configurations run round-robin within each repeat, so a change in machine load spreads over all three.
    """
    base = [f"training.max_train_samples={samples}", f"training.max_eval_samples={eval_samples}", "training.epochs=1"]
    configs = {
        "ours": ("ours", ["training.group_by_length=false"]),
        "trainer": ("trainer", ["training.group_by_length=false"]),
        "ours_grouped": ("ours", ["training.group_by_length=true"]),
    }
    runs: dict[str, list] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, (runner, extra) in configs.items():
            runs[name].append(bench.run(runner, "full", base + extra))
    result: dict[str, Any] = {name: {"median": medians(rows), "runs": rows} for name, rows in runs.items()}
    speed = {name: result[name]["median"]["samples_per_s"] for name in configs}
    result["ratio_ours_trainer"] = round(speed["ours"] / speed["trainer"], 3)
    result["gain_group_by_length"] = round(speed["ours_grouped"] / speed["ours"], 3)
    return result


def pair(ours: float, peer: float, digits: int) -> str:
    return f"{ours:,.{digits}f} / {peer:,.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """Tables ready to paste into RESULTS.md."""
    m, s = report["machine"], report["settings"]
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']}, transformers {m['transformers']}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['load_average'])}.",
        "",
    ]
    if "accuracy" in report:
        lines += [
            "Accuracy: each recipe as shipped and the Trainer peer with the same settings (group_by_length included); "
            "medians over the seeds listed; each cell is hf_transfer / Trainer peer.",
            "",
            "| strategy | seeds | dev acc | test acc | wall s | samples/s | trainable params | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for strategy, result in report["accuracy"].items():
            ours = result["ours"]["median"]
            peer = result["trainer"]["median"] if "trainer" in result else {key: float("nan") for key in ours}
            cells = [
                pair(ours["dev_accuracy"], peer["dev_accuracy"], 3),
                pair(ours["test_accuracy"], peer["test_accuracy"], 3),
                pair(ours["wall_s"], peer["wall_s"], 0),
                pair(ours["samples_per_s"], peer["samples_per_s"], 1),
                pair(ours["trainable_params"], peer["trainable_params"], 0),
                pair(ours["peak_rss_mb"], peer["peak_rss_mb"], 0),
            ]
            seeds = " / ".join(
                ", ".join(str(seed) for seed in result[runner]["seeds"]) if runner in result else "-"
                for runner in RUNNERS
            )
            lines.append(f"| {strategy} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    if "throughput" in report:
        t = report["throughput"]
        ours, peer, grouped = (t[name]["median"] for name in ("ours", "trainer", "ours_grouped"))
        lines += [
            f"Throughput: full fine-tuning, {s['throughput_samples']} training samples, 1 epoch, batch 32, max_length "
            f"128; medians of {s['repeats']} round-robin repeats.",
            "",
            "| run | train samples/s | train s | peak RSS MB |",
            "|---|---|---|---|",
            f"| hf_transfer, group_by_length off | {ours['samples_per_s']:.1f} | {ours['train_s']:.1f} | "
            f"{ours['peak_rss_mb']:.0f} |",
            f"| Trainer peer, group_by_length off | {peer['samples_per_s']:.1f} | {peer['train_s']:.1f} | "
            f"{peer['peak_rss_mb']:.0f} |",
            f"| hf_transfer, group_by_length on | {grouped['samples_per_s']:.1f} | {grouped['train_s']:.1f} | "
            f"{grouped['peak_rss_mb']:.0f} |",
            "",
            f"Ratio hf_transfer / Trainer (grouping off): **{t['ratio_ours_trainer']:.2f}**. "
            f"Gain from length-grouped batches (hf_transfer on / off): **{t['gain_group_by_length']:.2f}**.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of every code path")
    parser.add_argument("--only", choices=["accuracy", "throughput"])
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset of the default")
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--peer-strategies", help="strategies the Trainer peer runs for (default: all of them)")
    parser.add_argument(
        "--resume", type=Path, help="a report written by --json: its accuracy runs are kept, the missing ones run"
    )
    parser.add_argument("--throughput-samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--override", action="append", default=[], help="recipe override for every run (key=value)")
    parser.add_argument("--workdir", type=Path, help="logs and outputs (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep each run's output folder")
    parser.add_argument("--json", type=Path, help="write the full report (every run) here")
    parser.add_argument("--markdown", type=Path, help="write tables for RESULTS.md here")
    args = parser.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    sizes, eval_samples = [], 64
    if args.quick:
        seeds = seeds[:1]
        sizes = ["training.max_train_samples=32", "training.max_eval_samples=32", "training.epochs=1"]
        args.throughput_samples, args.repeats, eval_samples = 64, 1, 32

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sst2-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"logs in {workdir}", flush=True)
    bench = Bench(workdir, args.override, args.keep)
    settings = {
        "quick": args.quick,
        "strategies": strategies,
        "seeds": seeds,
        "throughput_samples": args.throughput_samples,
        "repeats": args.repeats,
        "overrides": args.override,
    }
    report: dict[str, Any] = {"machine": machine(), "settings": settings}
    started = time.perf_counter()

    def save(accuracy_so_far: dict) -> None:
        if args.json:
            partial = {**report, "accuracy": accuracy_so_far, "total_s": round(time.perf_counter() - started, 1)}
            args.json.write_text(json.dumps(partial, indent=2) + "\n", encoding="utf-8")

    if args.only != "throughput":
        earlier = json.loads(args.resume.read_text(encoding="utf-8")).get("accuracy", {}) if args.resume else {}
        peers = strategies if args.peer_strategies is None else args.peer_strategies.split(",")
        report["accuracy"] = accuracy(bench, strategies, seeds, sizes, save, peers, earlier)
    if args.only != "accuracy":
        report["throughput"] = throughput(bench, args.throughput_samples, args.repeats, eval_samples)
    report["total_s"] = round(time.perf_counter() - started, 1)

    table = markdown(report)
    print("\n" + table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
