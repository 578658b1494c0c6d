"""The model card of an output folder: Hub metadata (model-index results) and a body that says only what applies to
the run — the hyperparameters its strategy and task use, the recipe as the user wrote it, links to real Hub IDs only.

Every fact comes from the folder (through `RunFolder`), so an unchanged folder renders a byte-identical card. What
each task shows differently (usage snippet, examples table, per-class table) sits in one marked section at the end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .card_parts import Applies, RunFacts, TaskCard, always, by_gradient, table
from .recipe import parse_override
from .run_folder import RunFolder
from .sources import PACKAGED_DATASETS
from .tasks import TASKS

CARD = "README.md"
HUB = "https://huggingface.co"
EXAMPLES_SHOWN = 5
COUNTS = {"examples", "entities"}
"""Entries of metrics.json that count rather than score: shown in the table, not reported as Hub metrics."""
COMPARISON_MD = "strategy_comparison.md"
COMPARISON_PNG = "strategy_comparison.png"
"""Written into the winner's output folder by `hf-transfer compare`; they are published with it."""


def render_model_card(
    output_dir: Path, *, repo_id: str | None = None, adapter: bool = False, comparison_md: str | None = None
) -> ModelCard:
    """Build the model card of an output folder: Hub metadata (with model-index results) and a readable body.

    `adapter=True` describes the PEFT adapter repo that `publish` pushes for LoRA runs. The card is a pure function of
    the folder's files (no dates), so an unchanged folder renders byte-identical cards.
    """
    folder = RunFolder(output_dir)
    run, metrics = folder.run, folder.metrics
    public_text = public_recipe_text(folder)
    recipe = yaml.safe_load(public_text) or {}
    repo_id = repo_id or (recipe.get("hub") or {}).get("repo_id")
    name = repo_id.split("/")[-1] if repo_id else folder.path.name
    base_model, dataset_id = hub_model_id(run), hub_dataset_id(run)
    strategy = run.get("strategy") or (recipe.get("strategy") or {}).get("kind", "unknown")
    pipeline_tag = run.get("pipeline_tag") or run.get("task")
    task = _task_card(run)
    examples = folder.examples()[:EXAMPLES_SHOWN]
    dataset_name = (run.get("dataset") or {}).get("id") or "custom"
    data = ModelCardData(
        model_name=name,
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=pipeline_tag,
        license=run.get("license"),
        tags=["hf_transfer", strategy],
        eval_results=_eval_results(metrics, pipeline_tag, dataset_id or "custom", dataset_name) or None,
    )
    usage = task.usage(repo_id or f"your-username/{name}", examples, bool(folder.config.get("auto_map")), adapter)
    sections = [
        f"# {name}",
        _summary(run, strategy, base_model, dataset_id, adapter),
        _results(metrics),
        task.per_class(run),
        _confusion(folder, run),
        task.examples(examples),
        f"## How to use\n\n```python\n{usage}```",
        _onnx(folder),
        f"## Strategy comparison\n\n{comparison_md.strip()}" if comparison_md else _comparison(folder),
        _training(run, metrics, recipe, public_text, task),
        _reproducibility(run),
    ]
    body = "\n\n".join(s for s in sections if s)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def write_model_card(output_dir: Path) -> Path:
    """Write the folder's draft card (README.md): the card `publish` would push by default. Returns its path."""
    folder = RunFolder(output_dir)
    card = render_model_card(folder.path, adapter=folder.adapter)
    path = folder.path / CARD
    path.write_text(card.content, encoding="utf-8")
    return path


# -- what may be linked: real Hub IDs that served ---------------------------------------------------------------------


def _repo_id(name: object, *, namespaced: bool) -> str | None:
    """`name` when it is a valid Hub repo ID (with a namespace when `namespaced`), None for paths and the rest."""
    if not isinstance(name, str) or name.count("/") > 1 or (namespaced and name.count("/") != 1):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def hub_model_id(run: dict) -> str | None:
    """The base model's Hub ID when the Hub (or its cache, or a mirror of a Hub ID) served it; None for a local
    folder, whose remembered ID says where it once came from, not what trained."""
    source = run.get("model_source") or {}
    kind = source.get("kind")
    if kind not in ("hub", "hub-cache", "mirror"):
        return None
    return _repo_id(run.get("base_model") or source.get("hub_id"), namespaced=kind == "mirror")


def hub_dataset_id(run: dict) -> str | None:
    """The dataset's Hub ID when it is one: served by the Hub, or a mirror of a Hub ID — never a built-in packaged
    corpus such as `bbc-news` (PACKAGED_DATASETS), a local folder or a loader function."""
    dataset = run.get("dataset") or {}
    kind, name = dataset.get("source_kind"), dataset.get("id")
    if kind == "hub":
        return _repo_id(name, namespaced=False)
    if kind == "mirror" and name not in PACKAGED_DATASETS:
        return _repo_id(name, namespaced=True)
    return None


def _link(repo_id: str, kind: str = "") -> str:
    return f"[{repo_id}]({HUB}/{kind}{repo_id})"


# -- the general sections ---------------------------------------------------------------------------------------------


def _eval_results(metrics: dict, task: str | None, dataset_type: str, dataset_name: str) -> list[EvalResult]:
    return [
        EvalResult(
            task_type=task or "text-classification",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=metric,
            metric_value=value,
        )
        for split, values in metrics.items()
        if split != "train" and isinstance(values, dict)
        for metric, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and metric not in COUNTS
    ]


def _summary(run: dict, strategy: str, base_model: str | None, dataset_id: str | None, adapter: bool) -> str:
    source = (run.get("dataset") or {}).get("id") or "a custom dataset"
    on = _link(dataset_id, "datasets/") if dataset_id else f"`{source}`"
    model = _link(base_model) if base_model else f"`{run.get('base_model') or 'a local model'}`"
    what = "A LoRA adapter (PEFT) for" if adapter else "A fine-tuned version of"
    text = (
        f"{what} {model} for **{run.get('task', 'classification')}** on {on}, "
        f"trained with `hf_transfer` using the **{strategy}** strategy."
    )
    labels = list((run.get("id2label") or {}).values())
    if labels:
        text += f"\n\nLabels: {', '.join(f'`{label}`' for label in labels)}."
    return text


def _results(metrics: dict) -> str:
    splits = {s: v for s, v in metrics.items() if s != "train" and isinstance(v, dict)}
    names = sorted({m for values in splits.values() for m in values} - COUNTS)
    if not names:
        return ""
    names += sorted({m for values in splits.values() for m in values} & COUNTS)
    rows = [[split, *(values.get(m, "") for m in names)] for split, values in splits.items()]
    return "## Results\n\n" + table(["split", *names], rows)


def _confusion(folder: RunFolder, run: dict) -> str:
    if folder.file("confusion_matrix.png") is None:
        return ""
    split = run.get("eval_split", "evaluation")
    return f"### Confusion matrix ({split} split)\n\n![Confusion matrix](confusion_matrix.png)"


def _onnx(folder: RunFolder) -> str:
    """The ONNX export `publish` pushes beside the weights (`hf-transfer export`): its files and their parity."""
    manifest = folder.json("onnx/manifest.json")
    variants = manifest.get("variants") or {}
    if not variants:
        return ""
    rows = []
    for variant in variants.values():
        parity, guard = variant.get("parity") or {}, variant.get("guard")
        how = "fp32" if variant.get("quantization") is None else "dynamic int8 weights, per channel"
        if guard:
            margin = f"{guard['margin']:.3g}"
            how += f"; an answer within {margin} (logits) of another is answered again by `model.onnx`"
        worst, kept = parity.get("max_abs_diff"), parity.get("top_class_agreement")
        shown = [f"{worst:.2g}" if isinstance(worst, float) else "", f"{kept:.2%}" if isinstance(kept, float) else ""]
        rows.append([f"`onnx/{variant.get('file')}`", how, *shown])
    calibration = manifest.get("calibration") or {}
    rows_checked = next(iter(variants.values())).get("parity", {}).get("rows")
    on = f"{rows_checked} inputs" if rows_checked else "real inputs"
    if calibration.get("source") == "validation":
        on += f" ({calibration.get('rows')} rows of the validation split and the examples)"
    return (
        "## ONNX\n\n"
        f"An ONNX export (opset {manifest.get('opset')}) for serving on a CPU with ONNX Runtime; the Space uses the "
        f"fastest one whose check passed. Checked against PyTorch at export on {on}:\n\n"
        + table(["file", "what", "largest logit difference", "top class kept"], rows)
    )


def _comparison(folder: RunFolder) -> str:
    text = folder.text(COMPARISON_MD).strip()
    if not text:
        return ""
    if folder.file(COMPARISON_PNG) is not None:
        text += f"\n\n![Accuracy against trainable parameters]({COMPARISON_PNG})"
    return f"## Strategy comparison\n\n{text}"


def _training(run: dict, metrics: dict, recipe: dict, public_text: str, task: TaskCard) -> str:
    train = metrics.get("train") or {}
    trainable = run.get("trainable_params") or train.get("trainable_params")
    total = run.get("total_params") or train.get("total_params")
    lines = [f"- Strategy: **{run.get('strategy') or train.get('strategy', 'unknown')}**"]
    if trainable and total:
        lines.append(f"- Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    if "wall_s" in train:
        # Epochs on cached features take a fraction of a second: their rate says nothing about training speed.
        on_features = train.get("trained_on") == "features"
        speed = f", {train['samples_per_s']:.1f} samples/s" if "samples_per_s" in train and not on_features else ""
        note = "; the head trained on cached features of the frozen backbone" if on_features else ""
        lines.append(f"- Wall time: {train['wall_s']:.1f} s on {train.get('processes', 1)} process(es){speed}{note}")
    text = "## Training\n\n" + "\n".join(lines)
    rows = hyperparameters(recipe, run, metrics, task)
    if rows:
        text += "\n\n" + table(["hyperparameter", "value"], [[k, _shown(v)] for k, v in rows])
    return text + _recipe_section(run, public_text)


def _shown(value: object) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _reproducibility(run: dict) -> str:
    source = run.get("model_source") or {}
    base = f"`{source.get('hub_id') or run.get('base_model')}`"
    if source.get("kind") == "hub":
        base += f" at revision `{source.get('revision') or 'unknown'}`"
    elif source.get("kind") == "mirror":
        base += f" from the offline package `{source.get('package')}` {source.get('package_version')}"
    files = source.get("files") or {}
    dataset = run.get("dataset") or {}
    splits = ", ".join(f"{k}: {v}" for k, v in (dataset.get("splits") or {}).items())
    lines = [
        f"- Base model: {base}",
        *(f"  - `{name}` sha256 `{digest}`" for name, digest in files.items()),
        f"- Dataset: `{dataset.get('id')}` ({dataset.get('source_kind')}), fingerprint `{dataset.get('fingerprint')}`"
        + (f"; rows {splits}" if splits else ""),
        f"- Recipe sha256: `{run.get('recipe_sha256')}`",
    ]
    versions = run.get("versions") or {}
    if versions:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "## Reproducibility\n\n" + "\n".join(lines)


# -- hyperparameters: only those this run's strategy and task use -----------------------------------------------------


def _fine_tuning(facts: RunFacts) -> bool:
    return facts.strategy != "head"


def _lora(facts: RunFacts) -> bool:
    return facts.strategy == "lora"


def _contrastive(facts: RunFacts) -> bool:
    return facts.strategy == "contrastive"


def _lbfgs(facts: RunFacts) -> bool:
    return facts.head_type == "lbfgs"


GENERAL_KEYS: dict[str, Applies] = {
    "training.epochs": by_gradient,
    "training.batch_size": by_gradient,
    "training.lr": by_gradient,
    "training.weight_decay": by_gradient,
    "training.warmup": by_gradient,
    "training.scheduler": by_gradient,
    "training.grad_accum": by_gradient,
    "training.max_grad_norm": by_gradient,
    "training.eval_every": by_gradient,
    "training.early_stopping_patience": by_gradient,
    "training.metric_for_best": always,
    "training.seed": always,
    "training.max_train_samples": always,
    "training.max_eval_samples": always,
    "training.layer_lr_decay": _fine_tuning,
    "training.class_weights": always,
    "training.balanced_sampler": by_gradient,
    "strategy.layers": lambda f: f.strategy == "partial",
    "strategy.r": lambda f: _lora(f) or _contrastive(f),  # contrastive: shown when set (LoRA on the encoder)
    "strategy.alpha": _lora,
    "strategy.dropout": _lora,
    "strategy.target_modules": _lora,
    "strategy.loss": _contrastive,
    "strategy.margin": _contrastive,
    "strategy.class_block": _contrastive,
    "strategy.epoch_rows": _contrastive,
    "data.samples_per_class": always,
    "training.select_best": always,
    "strategy.unfreeze_every": _fine_tuning,
    "strategy.warmup_head_epochs": _fine_tuning,
    "strategy.warmup_head_lr": lambda f: f.warm_up,
    "strategy.head.type": lambda f: f.pooled or _lbfgs(f),
    "strategy.head.hidden": lambda f: f.head_type == "mlp",
    "strategy.head.C": _lbfgs,
    "strategy.head.cv_folds": _lbfgs,
    "strategy.head.max_iter": _lbfgs,
}
"""Recipe keys every task has, each with when it shapes the weights. Checkpoint housekeeping (`save_total_limit`,
`log_with`, `eval_batch_size`, `output_dir`, `feature_cache`) never does."""
SWITCHED_OFF = {"training.class_weights": "none", "training.balanced_sampler": False, "strategy.normalize": False}
"""Values that mean "this option is not used": a row saying so tells the reader nothing."""


def _get(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _set(tree: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def hyperparameters(recipe: dict, run: dict, metrics: dict, task: TaskCard) -> list[tuple[str, Any]]:
    """(key, value) of the resolved recipe that this run's strategy and task used; unset and switched-off dropped.

    Pooling and normalisation come from run.json, which records what was resolved when the recipe left them unset.
    """
    strategy = recipe.get("strategy") or {}
    resolved = json.loads(json.dumps(recipe))
    for key in ("pooling", "normalize"):
        if run.get(key) is not None:
            _set(resolved, f"strategy.{key}", run[key])
    facts = RunFacts(
        task=run.get("task") or "",
        strategy=run.get("strategy") or strategy.get("kind") or "",
        head_type=(strategy.get("head") or {}).get("type") or "linear",
        pooled=run.get("pooling") in ("mean", "cls"),
        on_features=(metrics.get("train") or {}).get("trained_on") == "features",
        warm_up=bool(strategy.get("warmup_head_epochs")),
        crop=bool(_get(recipe, "data.augmentation.random_resized_crop")),
    )
    rows = []
    for key, applies in {**GENERAL_KEYS, **task.keys}.items():
        value = _get(resolved, key)
        if value is not None and applies(facts) and SWITCHED_OFF.get(key, object()) != value:
            rows.append((key, value))
    return rows


# -- the recipe as published: Hub IDs and names, never local paths ----------------------------------------------------


def _public_paths(tree: dict, run: dict) -> dict[str, Any]:
    """Dotted key -> what is published instead, for each key of a recipe tree that holds a local path."""
    public: dict[str, Any] = {}
    model = tree.get("model")
    if isinstance(model, str):
        public["model"] = run.get("base_model") or Path(model).name
    dataset = run.get("dataset") or {}
    source = _get(tree, "data.source")
    if isinstance(source, str) and dataset.get("source_kind") not in ("hub", "mirror", "function"):
        public["data.source"] = dataset.get("id") or Path(source).name
    for split, file in (_get(tree, "data.files") or {}).items():
        public[f"data.files.{split}"] = Path(str(file)).name
    if isinstance(_get(tree, "strategy.feature_cache"), str):
        public["strategy.feature_cache"] = None  # a local cache folder means nothing elsewhere
    output_dir = _get(tree, "training.output_dir")
    if isinstance(output_dir, str):
        public["training.output_dir"] = f"outputs/{Path(output_dir).name}"
    return {key: value for key, value in public.items() if _get(tree, key) != value}


def public_recipe_text(output_dir: Path | RunFolder) -> str:
    """The run's resolved recipe as published: Hub IDs instead of local model/data paths, no local output folder.

    The local `recipe.yaml` keeps the paths (evaluate needs them); what leaves the machine names only Hub IDs.
    """
    folder = output_dir if isinstance(output_dir, RunFolder) else RunFolder(output_dir)
    if not folder.recipe_text:
        return ""
    tree = yaml.safe_load(folder.recipe_text) or {}
    for key, value in _public_paths(tree, folder.run).items():
        _set(tree, key, value)
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


def public_recipe_as_written(written: dict, run: dict) -> tuple[str, str, list[str]]:
    """(file name, YAML text, overrides) of run.json's `recipe_as_written`, with local paths made public.

    The text keeps the user's layout and comments: each local path is replaced where it stands. When that cannot be
    done cleanly (the path also appears elsewhere, say in a comment), the published tree is dumped instead.
    """
    text = str(written.get("text") or "")
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        tree = {}
    tree = tree if isinstance(tree, dict) else {}
    public = _public_paths(tree, run)
    for key, value in public.items():
        text = _replace_scalar(text, str(_get(tree, key)), value)
    if public and not _only_public(text, tree, public):
        for key, value in public.items():
            _set(tree, key, value)
        text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
    overrides = [_public_override(str(o), run) for o in written.get("overrides") or []]
    return Path(str(written.get("file") or "recipe.yaml")).name, text, overrides


def _only_public(text: str, tree: dict, public: dict[str, Any]) -> bool:
    """Whether `text` now reads as the published values and holds none of the local paths anywhere."""
    try:
        replaced = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return False
    return isinstance(replaced, dict) and all(
        _get(replaced, key) == value and str(_get(tree, key)) not in text for key, value in public.items()
    )


def _replace_scalar(text: str, old: str, new: Any) -> str:
    """Replace the YAML scalar `old` (plain or quoted, after `key:`) with `new` written as JSON, a YAML scalar."""
    pattern = re.compile(r"(:[ \t]+)([\"']?)" + re.escape(old) + r"\2([ \t]*(?:#.*)?)$", re.MULTILINE)
    return pattern.sub(lambda match: match[1] + json.dumps(new) + match[3], text)


def _public_override(override: str, run: dict) -> str:
    """`key=value` with a local path value replaced as in the published recipe."""
    try:
        path, value = parse_override(override)
    except ValueError:
        return override
    tree: dict = {}
    _set(tree, ".".join(path), value)
    public = _public_paths(tree, run)
    key = ".".join(path)
    return f"{key}={'null' if public[key] is None else public[key]}" if key in public else override


def _recipe_section(run: dict, public_text: str) -> str:
    written = run.get("recipe_as_written")
    if isinstance(written, dict) and written.get("text"):
        name, text, overrides = public_recipe_as_written(written, run)
        with_overrides = f", run with {', '.join(f'`{o}`' for o in overrides)}" if overrides else ""
        return (
            f"\n\nThe recipe as written (`{name}`){with_overrides}:\n\n```yaml\n{text.strip()}\n```\n\n"
            "The resolved recipe, every default spelled out, is `recipe.yaml` in this repo."
        )
    if public_text:
        return f"\n\nThe recipe (`recipe.yaml` in this repo):\n\n```yaml\n{public_text.strip()}\n```"
    return ""


def _task_card(run: dict) -> TaskCard:
    """The card sections of the run's task (its plug-in's); an unknown task reads as text classification."""
    return TASKS.get(run.get("task") or "", TASKS["text-classification"]).card
