"""`hf-transfer compare`: train several strategies under one budget (same data, seed and epochs) and report them side
by side: results.json, results.md and two plots, with the table and plot copied into the winner's output folder."""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

from . import ownership
from .recipe import Recipe, RecipeError, StrategyConfig, apply_overrides, load_recipe
from .tasks import task_for

logger = logging.getLogger(__name__)

SPEC_PATTERN = re.compile(
    r"^(?P<kind>head|partial|lora|full|contrastive)(?::(?P<value>[1-9][0-9]*))?(?:@(?P<lr>[^\s@]+))?$"
)
SPEC_FORMS = (
    "head, partial (the recipe's layers, default 3), partial:N (the top N layers), lora, lora:R (rank R), full, "
    "contrastive, contrastive:R (LoRA rank R on the encoder); any of them may end in @LR for its own learning rate, "
    "e.g. full@5e-5"
)
PLOTS = {"params": "accuracy_vs_trainable_params.png", "time": "accuracy_vs_wall_time.png"}
REPORT_FILES = ("results.json", "results.md", *PLOTS.values())
RESULT_KEYS = ("strategy", "accuracy", "macro_f1", "trainable_params", "wall_s", "peak_mem_mb")
MEMORY_SAMPLE_S = 0.02


def parse_spec(spec: str, base: Recipe) -> tuple[str, list[str]]:
    """`partial:2` → ("partial", overrides that turn `base` into that strategy). Keys that belong to another
    strategy are reset, so any base recipe becomes a valid recipe of the requested kind."""
    match = SPEC_PATTERN.match(spec.strip())
    if match is None or (match["value"] and match["kind"] in ("head", "full")):
        raise RecipeError(f"--strategies: {spec!r} is not a strategy; allowed forms: {SPEC_FORMS}")
    kind, value, lr = match["kind"], match["value"], match["lr"]
    s = base.strategy
    overrides = [f"strategy.kind={kind}"]
    # Only what the base recipe sets and the new kind forbids is reset, so the overrides stay short enough to read.
    if kind == "partial" and value:
        overrides.append(f"strategy.layers={value}")
    elif kind != "partial" and s.layers is not None:
        overrides.append("strategy.layers=null")
    if kind != "contrastive":  # its own keys, reset to their defaults for any other kind
        own = ("loss", "margin", "class_block", "epoch_rows")
        defaults = StrategyConfig.model_fields
        overrides += [f"strategy.{k}={defaults[k].default}" for k in own if getattr(s, k) != defaults[k].default]
    if kind == "contrastive":
        overrides += [f"strategy.{key}=null" for key in ("unfreeze_every", "warmup_head_epochs") if getattr(s, key)]
        if value:
            overrides.append(f"strategy.r={value}")
        elif s.r is not None:  # a LoRA recipe's rank would put adapters on the contrastive phase
            overrides.append("strategy.r=null")
        if s.head.type != "lbfgs":
            overrides.append("strategy.head={type: lbfgs}")
        if base.training.layer_lr_decay is not None:
            overrides.append("training.layer_lr_decay=null")
    elif kind == "head":
        overrides += [f"strategy.{key}=null" for key in ("unfreeze_every", "warmup_head_epochs") if getattr(s, key)]
        default_lr = StrategyConfig.model_fields["warmup_head_lr"].default
        if s.warmup_head_lr != default_lr:
            overrides.append(f"strategy.warmup_head_lr={default_lr}")
        if base.training.layer_lr_decay is not None:
            overrides.append("training.layer_lr_decay=null")
    else:
        if kind == "lora" and value:
            overrides.append(f"strategy.r={value}")
            if s.alpha is not None:
                overrides.append("strategy.alpha=null")  # alpha follows the rank: 2 × r
        if s.head.type == "lbfgs":  # an L-BFGS fit needs a frozen backbone
            overrides.append("strategy.head={type: linear}")
    if lr is not None:
        try:
            if float(lr) <= 0:
                raise ValueError
        except ValueError:
            raise RecipeError(
                f"--strategies: {spec!r}: the learning rate after @ must be a number > 0; allowed forms: {SPEC_FORMS}"
            ) from None
        overrides.append(f"training.lr={lr}")
    return kind, overrides


def recipe_tree_with(recipe: Recipe, overrides: list[str]) -> dict[str, Any]:
    """The resolved recipe as a dict with dotted overrides applied (for variants of a recipe held in memory)."""
    return apply_overrides(recipe.model_dump(mode="json"), overrides)


def run_folder_name(spec: str) -> str:
    """`partial:2` → `partial-2`, `full@5e-5` → `full-lr5e-5`: one folder per run under the comparison folder."""
    return spec.strip().replace(":", "-").replace("@", "-lr")


def default_compare_dir(recipe: Recipe) -> Path:
    """Beside the recipe's output folder: `outputs/sst2-minilm-lora` → `outputs/sst2-minilm-lora-compare`."""
    out = Path(recipe.training.output_dir)
    return out.with_name(out.name + "-compare")


def split_specs(text: str | list[str]) -> list[str]:
    specs = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not specs:
        raise RecipeError(f"--strategies: name at least one strategy; allowed forms: {SPEC_FORMS}")
    duplicates = sorted({s for s in specs if specs.count(s) > 1})
    if duplicates:
        raise RecipeError(f"--strategies: {duplicates[0]!r} is listed twice")
    return specs


# -- memory ----------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int | None:
    """The process's resident memory now (not its lifetime peak, which never goes down)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return None


def _release_freed_memory() -> None:
    """Give memory freed by earlier runs back to the OS, so each run's resident peak starts from a clean floor."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of the code inside `with`: CUDA's max allocated bytes on a GPU; on a CPU the highest resident set
    size a sampling thread sees (ru_maxrss is the lifetime peak and never goes down, so it cannot tell runs apart)."""

    def __init__(self, device: Any):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_S):
            self.peak = max(self.peak, _rss_bytes() or 0)

    def __enter__(self) -> PeakMemory:
        import torch

        _release_freed_memory()
        if getattr(self.device, "type", "cpu") == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = _rss_bytes() or 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes() or 0)
        else:
            self.peak = torch.cuda.max_memory_allocated(self.device)

    @property
    def megabytes(self) -> float:
        return round(self.peak / 2**20, 1)


# -- results ---------------------------------------------------------------------------------------------------------


def result_from_run(spec: str, run_dir: Path, peak_mem_mb: float, device: str) -> dict[str, Any]:
    """One row of results.json, its numbers read back from the run's metrics.json (so the table matches it)."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    split = "test" if "test" in metrics else "validation"
    scores, train = metrics[split], metrics["train"]
    task = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("task") or "text-classification"
    metric = task_for(task).compare_metric or "accuracy"  # token classification ranks by entity F1
    return {
        "strategy": spec,
        "accuracy": scores["accuracy"],
        "macro_f1": scores.get("f1_macro"),
        "trainable_params": train["trainable_params"],
        "wall_s": train["wall_s"],
        "peak_mem_mb": peak_mem_mb,
        "split": split,
        "total_params": train["total_params"],
        "train_s": train["train_s"],
        "memory_measure": "cuda max allocated" if device == "cuda" else "process RSS peak",
        "output_dir": str(run_dir),
        "metric": metric,
        "score": scores[metric],
    }


def winner(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The best run by the task's metric (accuracy; entity F1 for token classification); on a tie the one with fewer
    trainable parameters, then the faster one."""
    return max(results, key=lambda r: (r.get("score", r["accuracy"]), -r["trainable_params"], -r["wall_s"]))


def _ranked_by(results: list[dict[str, Any]]) -> str:
    return results[0].get("metric") or "accuracy"


def results_table(results: list[dict[str, Any]]) -> str:
    best = winner(results)["strategy"]
    metric = _ranked_by(results)
    extra = "" if metric == "accuracy" else f" {metric} |"
    rows = [
        f"| strategy |{extra} accuracy | macro-F1 | trainable params | wall time (s) | peak memory (MB) |",
        "|---|---|---|---|---|---|" + ("---|" if extra else ""),
    ]
    for r in results:
        name = f"**`{r['strategy']}`**" if r["strategy"] == best else f"`{r['strategy']}`"
        f1 = "—" if r["macro_f1"] is None else f"{r['macro_f1']:.4f}"
        score = "" if metric == "accuracy" else f" {r['score']:.4f} |"
        rows.append(
            f"| {name} |{score} {r['accuracy']:.4f} | {f1} | {r['trainable_params']:,} | {r['wall_s']:.1f} | "
            f"{r['peak_mem_mb']:,.1f} |"
        )
    return "\n".join(rows)


def _public_name(name: str) -> str:
    """A Hub ID as it is; a local path by its folder name only (the table goes into a published model card)."""
    return Path(name).name if Path(name).exists() else name


def budget_line(recipe: Recipe, results: list[dict[str, Any]]) -> str:
    t = recipe.training
    return (
        f"Every run: `{_public_name(recipe.model)}` on `{_public_name(recipe.data.source)}`, seed {t.seed}, "
        f"{t.epochs} epoch(s), batch "
        f"{t.batch_size}, scored on the {results[0]['split']} split; peak memory is the "
        f"{results[0]['memory_measure']} during the run. Best in bold."
    )


def plot_points(results: list[dict[str, Any]]) -> dict[str, list[tuple[str, float, float]]]:
    """The plotted series: per plot, one (label, x, y) point per strategy."""
    return {
        "params": [
            (r["strategy"], float(r["trainable_params"]), float(r.get("score", r["accuracy"]))) for r in results
        ],
        "time": [(r["strategy"], float(r["wall_s"]), float(r.get("score", r["accuracy"]))) for r in results],
    }


def write_plots(results: list[dict[str, Any]], folder: Path) -> dict[str, list[tuple[str, float, float]]]:
    """Accuracy against trainable parameters (log x) and against wall time, one labelled point per strategy.
    Returns the points each figure holds, read back from matplotlib's own artists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"params": ("trainable parameters (log scale)", "log"), "time": ("wall time (s)", "linear")}
    plotted: dict[str, list[tuple[str, float, float]]] = {}
    for key, points in plot_points(results).items():
        xlabel, scale = titles[key]
        figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
        collection = axes.scatter([p[1] for p in points], [p[2] for p in points], color="tab:blue", zorder=3)
        for index, (label, x, y) in enumerate(points):
            # Alternating above and below: neighbours with close x (partial:1 beside lora) stay readable.
            offset = (5, 6) if index % 2 == 0 else (5, -13)
            axes.annotate(label, (x, y), textcoords="offset points", xytext=offset, fontsize=9)
        axes.set_xscale(scale)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(f"{_ranked_by(results)} ({results[0]['split']})")
        axes.set_title(f"Accuracy against {xlabel.split(' (')[0]}")
        axes.grid(True, alpha=0.3)
        figure.tight_layout()
        figure.savefig(folder / PLOTS[key])
        labels = [text.get_text() for text in axes.texts]
        plotted[key] = [
            (label, float(x), float(y)) for label, (x, y) in zip(labels, collection.get_offsets(), strict=True)
        ]
        plt.close(figure)
    return plotted


def write_report(recipe: Recipe, results: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """results.json, results.md and the plots in `folder`; the table and the parameters plot also go to the winner's
    output folder (whose draft model card is rewritten to show them). Main process only."""
    from .hub import COMPARISON_MD, COMPARISON_PNG, write_model_card

    ownership.claim_report_files(folder, REPORT_FILES, "compare", replace_own=True)  # checked before training too
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plotted = write_plots(results, folder)
    table, budget = results_table(results), budget_line(recipe, results)
    markdown = "\n".join(
        [
            "# Strategy comparison",
            "",
            table,
            "",
            budget,
            "",
            f"![Accuracy against trainable parameters]({PLOTS['params']})",
            "",
            f"![Accuracy against wall time]({PLOTS['time']})",
            "",
        ]
    )
    (folder / "results.md").write_text(markdown, encoding="utf-8")
    best = winner(results)
    best_dir = Path(best["output_dir"])
    (best_dir / COMPARISON_MD).write_text(f"{table}\n\n{budget}\n", encoding="utf-8")
    shutil.copyfile(folder / PLOTS["params"], best_dir / COMPARISON_PNG)
    write_model_card(best_dir)
    return {"winner": best["strategy"], "plots": plotted}


def compare(
    recipe_path: str | Path,
    specs: str | list[str],
    overrides: list[str] | tuple[str, ...] = (),
    *,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]] | None:
    """Train each strategy spec on the same recipe (same data, seed, epochs) into `<output_dir>/<spec>`, then write
    the comparison. Returns the results (one dict per spec, keys `RESULT_KEYS` first) on the main process, None on
    the others. Under `accelerate launch` every process calls it."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from .errors import OutputDirError
    from .train import train

    base = load_recipe(recipe_path, overrides)
    if task_for(base.task).compare_metric is None:
        raise RecipeError(f"task {base.task!r}: `hf-transfer compare` ranks runs by a score this task lacks")
    folder = Path(output_dir) if output_dir else default_compare_dir(base)
    specs = split_specs(specs)
    ownership.check_output_location(folder, base, recipe_path, what="the comparison folder")
    ownership.check_report_files(folder, REPORT_FILES, "compare", replace_own=overwrite)
    runs = []
    for spec in specs:  # every spec is checked, and every run folder found free, before the first one trains
        kind, spec_overrides = parse_spec(spec, base)
        run_dir = folder / run_folder_name(spec)
        recipe = load_recipe(recipe_path, list(overrides) + spec_overrides, str(run_dir))
        # Anyone else's files, a run holding the folder, or a place no run goes: refused whatever the flags.
        ownership.claim_output_dir(run_dir, recipe, overwrite=True, resume=False)
        if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
            raise OutputDirError(f"{str(run_dir)!r} already holds a run; pass --overwrite to replace the comparison")
        runs.append((spec, recipe, run_dir))
    _check_layers(base, runs)
    accelerator = Accelerator()  # first, so every rank knows its place (GUIDE: a bare PartialState misreports)
    results = []
    progress = tqdm(runs, desc="compare", disable=not accelerator.is_main_process)
    for spec, recipe, run_dir in progress:
        progress.set_postfix_str(spec)
        logger.info("compare: %s into %s", spec, run_dir)
        with PeakMemory(accelerator.device) as memory:
            train(recipe, overwrite=overwrite)
        if accelerator.is_main_process:
            results.append(result_from_run(spec, run_dir, memory.megabytes, accelerator.device.type))
    if accelerator.is_main_process:
        report = write_report(base, results, folder)
        logger.info("compare: %s wins; report in %s", report["winner"], folder)
    accelerator.wait_for_everyone()
    return results if accelerator.is_main_process else None


def _check_layers(base: Recipe, runs: list[tuple[str, Recipe, Path]]) -> None:
    """A `partial:N` deeper than the model fails before any run trains, not after the first ones."""
    deepest = max((r.strategy.layers or 0 for _, r, _ in runs if r.strategy.kind == "partial"), default=0)
    if not deepest:
        return
    from transformers import AutoConfig

    from .sources import resolve_model

    config = AutoConfig.from_pretrained(
        resolve_model(base.model, base.model_revision).location, trust_remote_code=base.trust_remote_code
    )
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and deepest > layers:
        spec = next(s for s, r, _ in runs if r.strategy.kind == "partial" and (r.strategy.layers or 0) == deepest)
        raise RecipeError(f"--strategies: {spec!r} unlocks {deepest} layers but {base.model!r} has {layers}")
