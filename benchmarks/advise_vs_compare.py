"""Does `advise` pick what `compare` finds best? Per dataset: `hf-transfer advise` on a cold cache, then
`hf-transfer compare` over every strategy plus the advised one, under one budget; reports the advised setting's test
accuracy against the best one and advise's time against compare's. See benchmarks/README.md."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sst2_strategies import ROOT, child_env, machine, run_child  # noqa: E402

LEARNING_RATES = {"head": "5e-3", "partial": "1e-4", "lora": "1e-3", "full": "5e-5"}
"""One learning rate per kind on both sides (advise's recommended recipe uses the same ones)."""
DATASETS = {
    "sst2": "sst2-minilm-lora.yaml",
    "banking77": "banking77-minilm-lora.yaml",
    "bbc-news": "bbc-news-minilm-head.yaml",
}
ADVISE_ONLY = {"bbc-news"}
"""Where the question is only what advise says (a frozen head is already near-perfect on BBC News)."""


def with_lr(spec: str) -> str:
    return spec if "@" in spec else f"{spec}@{LEARNING_RATES[spec.split(':')[0]]}"


def run_dataset(name: str, workdir: Path, strategies: list[str], budget: list[str], env: dict[str, str]) -> dict:
    recipe = str(ROOT / "recipes" / DATASETS[name])
    folder = workdir / name
    advise_cmd = [sys.executable, "-m", "hf_transfer", "advise", recipe, *budget, "--output-dir"]
    _, advise_s = run_child(advise_cmd + [str(folder / "advise")], workdir / f"{name}-advise.log", env)
    report = json.loads((folder / "advise" / "advise.json").read_text())
    advised = with_lr(report["recommendation"]["spec"])
    summary = {
        "dataset": name,
        "advised": advised,
        "reasons": report["recommendation"]["reasons"],
        "probe": [(p["layer"], p["accuracy"]) for p in report["probe"]],
        "advise_s": round(advise_s, 1),
    }
    if name in ADVISE_ONLY:
        return summary
    specs = [with_lr(s) for s in strategies]
    if advised not in specs:
        specs.append(advised)
    compare_cmd = [sys.executable, "-m", "hf_transfer", "compare", recipe, *budget, "--strategies"]
    compare_cmd += [",".join(specs), "--output-dir", str(folder / "compare"), "--overwrite"]
    _, compare_s = run_child(compare_cmd, workdir / f"{name}-compare.log", env)
    results = json.loads((folder / "compare" / "results.json").read_text())
    best = max(results, key=lambda r: r["accuracy"])
    mine = next(r for r in results if r["strategy"] == advised)
    return {
        **summary,
        "compare_s": round(compare_s, 1),
        "advise_over_compare": round(advise_s / compare_s, 3),
        "best": best["strategy"],
        "best_accuracy": best["accuracy"],
        "advised_accuracy": mine["accuracy"],
        "gap_points": round(100 * (best["accuracy"] - mine["accuracy"]), 2),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", default="sst2,banking77,bbc-news")
    parser.add_argument("--strategies", default="head,partial:2,partial:4,lora,full")
    parser.add_argument("--budget", nargs="*", default=["training.max_train_samples=2000", "training.epochs=2"])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="advise-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = child_env(workdir)  # a fresh HF_HOME: advise starts on a cold cache
    report: dict[str, Any] = {"machine": machine(), "budget": args.budget, "datasets": []}
    for name in args.datasets.split(","):
        report["datasets"].append(run_dataset(name, workdir, args.strategies.split(","), args.budget, env))
        summary = {k: v for k, v in report["datasets"][-1].items() if k not in ("results", "reasons", "probe")}
        print(json.dumps(summary), flush=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
