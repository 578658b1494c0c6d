"""Cost of checkpointing every epoch (vs never) and 1- vs 2-process wall time on CPU, on packaged MiniLM + BBC News.

    python benchmarks/checkpoint_overhead.py                      # both parts, 3 repeats each (~20 min on 2 cores)
    python benchmarks/checkpoint_overhead.py --only checkpoint --json ckpt.json --markdown ckpt.md
    python benchmarks/checkpoint_overhead.py --quick              # smoke test of every code path; figures mean nothing

Checkpoint overhead: the same run twice, one way with `hf_transfer.checkpoints.save` as shipped and one way with it
replaced by a no-op, in child processes, alternating. Nothing else differs: evaluation still runs every epoch (a huge
`training.eval_every` would drop the evaluations but keep the end-of-epoch checkpoints, so it measures something
else). Reported: median wall time of each side, their difference as % of the no-checkpoint time, and the time spent
inside `save` itself as % of the run.

Processes: `accelerate launch` with 1 process x batch B (2 threads) and 2 DDP processes x B/2 (1 thread each) on
CPU; the same global batch, so the runs train the same model (tests/test_parity.py). On 2 cores this measures
the cost of the second process, not a speed-up: the point of 2 processes on CPU is to test correctness.
"""

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
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "bbc-news-minilm-head.yaml"
# Full fine-tuning is the heaviest checkpoint: all weights plus two AdamW moments for each of them.
OVERRIDES = [
    "strategy.kind=full",
    "training.lr=5e-5",
    "training.epochs=3",
    "training.batch_size=16",
    "training.max_train_samples=512",
    "training.max_eval_samples=128",
    "data.max_length=128",
]
QUICK = [
    "training.epochs=2",
    "training.max_train_samples=32",
    "training.max_eval_samples=16",
    "data.max_length=32",
]
ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
LAUNCH = ["accelerate", "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def machine() -> dict[str, Any]:
    """What the figures were measured on; the load average matters on a shared machine."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": names[0] if names else platform.processor(),
        "torch": version("torch"),
        "accelerate": version("accelerate"),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def run(command: list[str], log: Path, env: dict[str, str]) -> float:
    """Run one child process to completion; return its wall time in seconds."""
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as output:
        code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if code:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:])
        raise RuntimeError(f"exit {code}: {' '.join(command)}\n--- last lines of {log} ---\n{tail}")
    return time.perf_counter() - started


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the child: one in-process training run


def child(arm: str, out: Path, result: Path, overrides: list[str]) -> None:
    """Train once with checkpoints as shipped ("every") or with `save` a no-op ("never"); write the timings."""
    from hf_transfer import checkpoints
    from hf_transfer.recipe import load_recipe
    from hf_transfer.train import train

    real_save = checkpoints.save
    spent: list[float] = []

    def timed_save(accelerator: Any, output_dir: Path, *args: Any, **kwargs: Any) -> Path:
        started = time.perf_counter()
        path = real_save(accelerator, output_dir, *args, **kwargs)
        spent.append(time.perf_counter() - started)
        return path

    def no_save(accelerator: Any, output_dir: Path, *args: Any, **kwargs: Any) -> Path:
        return output_dir / "checkpoints"

    checkpoints.save = timed_save if arm == "every" else no_save
    recipe = load_recipe(RECIPE, overrides, output_dir=str(out))
    started = time.perf_counter()
    train(recipe)
    wall = time.perf_counter() - started
    newest = checkpoints.checkpoint_dirs(out)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    record = {
        "arm": arm,
        "wall_s": wall,
        "save_s": sum(spent),
        "saves": len(spent),
        "checkpoint_mb": folder_bytes(newest[-1]) / 1e6 if newest else 0.0,
        "test_accuracy": metrics["test"]["accuracy"],
    }
    result.write_text(json.dumps(record), encoding="utf-8")


# ---------------------------------------------------------------- the two parts


def checkpoint_part(workdir: Path, overrides: list[str], repeats: int, env: dict[str, str]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"every": [], "never": []}
    for repeat in range(repeats):
        for arm in ("every", "never") if repeat % 2 == 0 else ("never", "every"):  # alternate which goes first
            name = f"ckpt-{repeat}-{arm}"
            out, result = workdir / name, workdir / f"{name}.json"
            command = [sys.executable, __file__, "child", arm, str(out), str(result), *overrides]
            run(command, workdir / f"{name}.log", env)
            runs[arm].append(json.loads(result.read_text(encoding="utf-8")))
            shutil.rmtree(out, ignore_errors=True)
            print(f"  {name}: {runs[arm][-1]}", flush=True)
    every = statistics.median(r["wall_s"] for r in runs["every"])
    never = statistics.median(r["wall_s"] for r in runs["never"])
    save = statistics.median(r["save_s"] for r in runs["every"])
    return {
        "runs": runs,
        "median_wall_every_s": every,
        "median_wall_never_s": never,
        "overhead_pct": 100 * (every - never) / never,
        "median_save_s": save,
        "save_share_pct": 100 * save / every,
        "saves_per_run": runs["every"][0]["saves"],
        "checkpoint_mb": runs["every"][0]["checkpoint_mb"],
    }


def process_part(
    workdir: Path, overrides: list[str], repeats: int, batch: int, threads: int, env: dict[str, str]
) -> dict[str, Any]:
    arms = {
        1: [*LAUNCH, "--num_processes", "1", "--num_cpu_threads_per_process", str(threads)],
        2: [
            *LAUNCH,
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_cpu_threads_per_process",
            str(max(1, threads // 2)),
        ],
    }
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for repeat in range(repeats):
        for processes in (1, 2) if repeat % 2 == 0 else (2, 1):
            name = f"procs-{repeat}-{processes}"
            out = workdir / name
            command = [*arms[processes], "-m", "hf_transfer", "train", str(RECIPE), *overrides]
            command += [f"training.batch_size={batch // processes}", "--output-dir", str(out)]
            child_env = {**env, "ACCELERATE_USE_CPU": "1"} if processes == 2 else env
            process_s = run(command, workdir / f"{name}.log", child_env)
            metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
            runs[processes].append(
                {
                    "process_s": process_s,
                    "wall_s": metrics["train"]["wall_s"],
                    "train_s": metrics["train"]["train_s"],
                    "samples_per_s": metrics["train"]["samples_per_s"],
                    "test_accuracy": metrics["test"]["accuracy"],
                }
            )
            shutil.rmtree(out, ignore_errors=True)
            print(f"  {name}: {runs[processes][-1]}", flush=True)
    medians = {
        processes: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for processes, rows in runs.items()
    }
    return {
        "runs": runs,
        "medians": medians,
        "global_batch": batch,
        "two_over_one_wall": medians[2]["process_s"] / medians[1]["process_s"],
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Machine: {report['machine']}", ""]
    if "checkpoint" in report:
        c = report["checkpoint"]
        lines += [
            f"Checkpoint every epoch vs never; {c['saves_per_run']} checkpoints of {c['checkpoint_mb']:.0f} MB per "
            f"run; medians of {len(c['runs']['every'])} alternating repeats.",
            "",
            "| checkpoints | wall s | time in save s | overhead |",
            "|---|---|---|---|",
            f"| every epoch | {c['median_wall_every_s']:.1f} | {c['median_save_s']:.1f} | "
            f"{c['overhead_pct']:+.1f}% wall, {c['save_share_pct']:.1f}% of the run inside save |",
            f"| never | {c['median_wall_never_s']:.1f} | 0 | — |",
            "",
        ]
    if "processes" in report:
        p = report["processes"]
        lines += [
            f"1 process x batch {p['global_batch']} vs 2 DDP processes x {p['global_batch'] // 2} on CPU; medians "
            f"of {len(p['runs'][1])} alternating repeats.",
            "",
            "| processes | process wall s | train s | samples/s | test acc |",
            "|---|---|---|---|---|",
        ]
        for processes, m in p["medians"].items():
            lines.append(
                f"| {processes} | {m['process_s']:.1f} | {m['train_s']:.1f} | {m['samples_per_s']:.1f} | "
                f"{m['test_accuracy']:.4f} |"
            )
        lines += ["", f"2 processes / 1 process wall time: {p['two_over_one_wall']:.2f}x", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "child":
        child(argv[1], Path(argv[2]), Path(argv[3]), argv[4:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["checkpoint", "processes"], help="run one part only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="global batch of the process comparison (even)")
    parser.add_argument("--threads", type=int, default=machine()["nproc"], help="CPU threads in total")
    parser.add_argument("--quick", action="store_true", help="tiny runs, 1 repeat: checks the code paths only")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more recipe overrides")
    parser.add_argument("--workdir", help="where runs and logs go (default: a new temporary folder)")
    parser.add_argument("--json", help="write every run, the medians and the machine here")
    parser.add_argument("--markdown", help="write the tables for benchmarks/RESULTS.md here")
    args = parser.parse_args(argv)

    overrides = OVERRIDES + (QUICK if args.quick else []) + list(args.set)
    repeats = 1 if args.quick else args.repeats
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hf_transfer_ckpt_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = os.environ.copy()
    for key, value in ENV_DEFAULTS.items():
        env.setdefault(key, value)
    env.setdefault("HF_HOME", str(workdir / "hf_home"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)

    report: dict[str, Any] = {"machine": machine(), "overrides": overrides, "workdir": str(workdir)}
    if args.only in (None, "checkpoint"):
        print("checkpoint overhead:", flush=True)
        report["checkpoint"] = checkpoint_part(workdir, overrides, repeats, env)
    if args.only in (None, "processes"):
        print("1 vs 2 processes:", flush=True)
        report["processes"] = process_part(workdir, overrides, repeats, args.batch, args.threads, env)
    text = markdown(report)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
