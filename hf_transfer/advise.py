"""`hf-transfer advise`: measure the data, its distance from the pretraining domain and where the useful features live
(a per-layer linear probe on frozen features), then recommend a strategy with its reasons and a cost estimate."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

from . import ownership
from .recipe import Recipe, RecipeError, load_recipe
from .recommend import RECOMMENDED_LR, recommend, skill
from .tasks import build_model, choose_pooling, task_for
from .tasks.text_classification import TEXT_FEATURES, load_tokenizer, sentence_transformers_pooling, tokenize_splits

if TYPE_CHECKING:
    from .sources import Resolved

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE = 2000
ADVISE_FILES = ("advise.json", "advise.md")
"""Rows of train that the probe and the text statistics look at: minutes on a CPU, not hours."""
PROBE_FOLDS = 5
PROBE_C = 1.0
"""One fixed regularisation for every layer (on standardised features): searching C per layer would favour the
layers with the most noise to overfit, and costs a fit per value."""
UNKNOWN_EXCESS = 0.01
SPLIT_EXCESS = 0.15
"""Unknown tokens and split words above the reference English by more than these shares of tokens and words mark
text far from the tokenizer's (and so the pretraining's) domain. Differences, not ratios: the reference rates are
near zero, so a ratio would flag ordinary text."""
BACKWARD_COST = {"head": 0.0, "lora": 2.0, "full": 3.0, "contrastive": 3.0}
"""Training cost of one example relative to one frozen forward pass (partial: 1 + 2 × N / L, computed)."""

REFERENCE_SENTENCES = [
    "The weather was warm and sunny for most of the week.",
    "She finished reading the book before going to bed.",
    "Our team will meet again on Monday morning to review the plan.",
    "The new restaurant near the station serves fresh pasta and fish.",
    "He forgot his keys at the office and had to go back.",
    "Prices rose sharply after the company announced the merger.",
    "The children played football in the park until it got dark.",
    "Please send me the report by the end of the day.",
    "The museum opens at ten and closes at six in the evening.",
    "I think the second film was much better than the first one.",
    "The government plans to build more houses in the north of the country.",
    "After the long flight, they took a taxi to the hotel.",
    "The doctor told him to drink more water and rest for a few days.",
    "Many people use their phones to read the news every morning.",
    "The band played their most famous songs at the end of the concert.",
    "We need to buy milk, bread and eggs on the way home.",
    "The river flooded several villages after the heavy rain.",
    "Her new job starts next month, and she is very excited about it.",
    "The teacher explained the problem again, slowly and clearly.",
    "It was a quiet town with a small church and an old bridge.",
    "The players were tired but happy after winning the final match.",
    "Scientists have found a new way to store energy from the sun.",
    "My brother lives in a small flat in the city centre.",
    "The meeting was cancelled because the manager was ill.",
    "They walked along the beach and watched the boats come in.",
    "This phone is cheaper, but the battery does not last long.",
    "The police asked witnesses to call if they saw anything unusual.",
    "Most of the shops in the village close early on Sundays.",
    "The story is simple, but the actors make it worth watching.",
    "Our flight was delayed for two hours because of the storm.",
    "The school will offer free lunches to all students next year.",
    "He has been learning to play the piano since he was six.",
    "The market sells fruit, vegetables and flowers every Saturday.",
    "The minister said the economy would grow faster next year.",
    "I would like to book a table for four people at eight o'clock.",
    "The garden looks beautiful in spring when the trees are in flower.",
    "She wrote a long letter to her grandmother about the trip.",
    "The software update fixed several problems with the app.",
    "There is a train to the airport every fifteen minutes.",
    "The crowd cheered loudly when the singer walked on stage.",
]
"""Everyday English written for this module: what a model pretrained on web and book text tokenizes easily."""


# -- data ------------------------------------------------------------------------------------------------------------


def _check_task(recipe: Recipe) -> None:
    if not task_for(recipe.task).advise_probe:
        raise RecipeError(
            f"task {recipe.task!r}: `hf-transfer advise` supports text tasks for now, single-label "
            "'text-classification' (its probe reads a text encoder's hidden states and needs one class per row); "
            "`hf-transfer compare` works for every task"
        )


def stratified_sample(split: Dataset, size: int, seed: int) -> Dataset:
    """At most `size` rows, every class in proportion (seeded); the whole split when it is small enough."""
    if len(split) <= size:
        return split
    from sklearn.model_selection import train_test_split

    labels = np.asarray(list(split["label"]))
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 and size >= len(counts) else None
    keep, _ = train_test_split(np.arange(len(split)), train_size=size, random_state=seed, stratify=stratify)
    return split.select(sorted(keep.tolist()))


def data_statistics(train: Dataset, sample: Dataset, id2label: dict[int, str], tokenizer: Any, max_length: int):
    """Examples per class and imbalance on the whole train split; token lengths against `max_length` on the sample."""
    counts = np.bincount(np.asarray(list(train["label"])), minlength=len(id2label))
    pair = list(sample["text_pair"]) if "text_pair" in sample.column_names else None
    lengths = np.asarray([len(ids) for ids in tokenizer(list(sample["text"]), pair, truncation=False)["input_ids"]])
    cut = np.maximum(lengths - max_length, 0)
    return {
        "train_examples": int(len(train)),
        "examples_per_class": {id2label[i]: int(c) for i, c in enumerate(counts)},
        "majority_rate": round(float(counts.max() / counts.sum()), 4),
        "imbalance": round(float(counts.max() / max(counts.min(), 1)), 3),
        "smallest_class": id2label[int(counts.argmin())],
        "sample_examples": int(len(sample)),
        "max_length": max_length,
        "tokens_mean": round(float(lengths.mean()), 2),
        "tokens_median": float(np.median(lengths)),
        "tokens_p95": float(np.percentile(lengths, 95)),
        "tokens_max": int(lengths.max()),
        "truncated_fraction": round(float((lengths > max_length).mean()), 4),
        "tokens_lost_fraction": round(float(cut.sum() / lengths.sum()), 4),
    }


def tokenizer_rates(tokenizer: Any, texts: list[str]) -> dict[str, float]:
    """How the tokenizer copes with `texts`: the unknown-token rate, the share of words split into several pieces,
    and pieces per word (fertility). Words are the tokenizer's own pre-tokenized words."""
    specials = set(tokenizer.all_special_ids)
    unknown, tokens, words, split_words, pieces = 0, 0, 0, 0, 0
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False)
    for index, ids in enumerate(encoded["input_ids"]):
        word_ids = encoded.word_ids(index) if getattr(encoded, "is_fast", False) else None
        if word_ids is None:  # a slow tokenizer: whitespace words, tokenized one by one
            word_ids = [w for w, word in enumerate(texts[index].split()) for _ in tokenizer.tokenize(word)]
        per_word: dict[int, int] = {}
        for token, word in zip(ids, word_ids, strict=False):
            if token in specials and token != tokenizer.unk_token_id:
                continue
            tokens += 1
            unknown += int(token == tokenizer.unk_token_id)
            if word is not None:
                per_word[word] = per_word.get(word, 0) + 1
        words += len(per_word)
        split_words += sum(1 for n in per_word.values() if n > 1)
        pieces += sum(per_word.values())
    return {
        "unknown_token_rate": round(unknown / max(tokens, 1), 4),
        "split_word_rate": round(split_words / max(words, 1), 4),
        "pieces_per_word": round(pieces / max(words, 1), 4),
    }


# -- probe -----------------------------------------------------------------------------------------------------------


def probe_layers(features: torch.Tensor, labels: np.ndarray, seed: int) -> list[dict[str, Any]]:
    """A logistic regression on each hidden state's pooled features, scored by stratified K-fold cross-validation:
    `[{"layer": i, "layers_above": L - i, "accuracy": mean, "accuracy_std": std over folds}, ...]`."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    _, counts = np.unique(labels, return_counts=True)
    folds = min(PROBE_FOLDS, int(counts.min()))
    if folds < 2:
        raise RecipeError("advise: a class has a single row in the sample; the probe needs two per class (--sample)")
    top = features.shape[0] - 1
    results = []
    # One BLAS thread: beside torch's threads, OpenBLAS threads fight for the same cores (see fit_logistic_head).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore")  # convergence warnings on random features say nothing the score does not
        for index in tqdm(range(top + 1), desc="probe: layers"):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=1000))
            cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
            scores = cross_val_score(model, features[index].double().numpy(), labels, cv=cv)
            results.append(
                {
                    "layer": index,
                    "name": "embeddings" if index == 0 else f"layer {index}",
                    "layers_above": top - index,
                    "accuracy": round(float(scores.mean()), 4),
                    "accuracy_std": round(float(scores.std()), 4),
                    "folds": folds,
                }
            )
    return results


def estimate_costs(
    model: torch.nn.Module,
    recipe: Recipe,
    source: Resolved,
    id2label: dict[int, str],
    specs: list[str],
    examples_per_s: float,
    data: dict[str, Any],
    eval_examples: int,
) -> dict[str, dict[str, Any]]:
    """Per strategy: trainable parameters (exact: the strategy applied to a copy of the model the run would build,
    with its pooling), training time (from the measured frozen encoding throughput) and the memory training adds for
    the model (weights, gradients, AdamW moments, stored activations; the framework's own memory comes on top).
    Time and memory are rough: within a factor of about two on the same machine."""
    from .compare import parse_spec, recipe_tree_with
    from .recipe import recipe_from_dict
    from .strategies import DEFAULT_PARTIAL_LAYERS, apply_strategy, count_parameters, encoder_layers

    layers = len(encoder_layers(model)[1])
    config, t = model.config, recipe.training
    sequence = min(data["tokens_p95"], recipe.data.max_length)
    hidden, heads = config.hidden_size, getattr(config, "num_attention_heads", 1)
    # Activations a transformer layer keeps for backward, fp32 (Korthikanti et al. 2022, doubled from fp16).
    per_layer = t.batch_size * sequence * (34 * hidden + 5 * heads * sequence) * 2
    models = {getattr(model.config, "hf_transfer_pooling", None): model}
    estimates = {}
    for spec in specs:
        kind, overrides = parse_spec(spec, recipe)
        variant = recipe_from_dict(recipe_tree_with(recipe, overrides), f"advise ({spec})")
        pooling = choose_pooling(variant, Path(source.location))
        key = None if pooling == "pooler" else pooling
        if key not in models:  # the architecture's own head (with its pooler) when the run would use it
            models[key] = build_model(variant, source.location, id2label, pooling)
        trainable, total = count_parameters(apply_strategy(copy.deepcopy(models[key]), variant))
        unlocked = {"head": 0, "full": layers, "lora": layers, "contrastive": layers}.get(
            kind, variant.strategy.layers or 0
        )
        unlocked = unlocked or (DEFAULT_PARTIAL_LAYERS if kind == "partial" else 0)
        cost = BACKWARD_COST.get(kind, 2.0 * unlocked / layers)
        seconds = (data["train_examples"] + eval_examples) / examples_per_s  # the head's one encoding pass
        if kind != "head":
            seconds = t.epochs * (data["train_examples"] * (1 + cost) + eval_examples) / examples_per_s
        memory = total * 4 + trainable * 12 + unlocked * per_layer  # weights; grads + two AdamW moments; activations
        estimates[spec] = {
            "trainable_params": int(trainable),
            "total_params": int(total),
            "train_s": round(seconds, 1),
            "model_mem_mb": round(memory / 2**20, 1),
        }
    return estimates


# -- the command -----------------------------------------------------------------------------------------------------


def default_advise_dir(recipe: Recipe) -> Path:
    """Beside the recipe's output folder: `outputs/sst2-minilm-lora` → `outputs/sst2-minilm-lora-advise`."""
    out = Path(recipe.training.output_dir)
    return out.with_name(out.name + "-advise")


def _pooling_for_probe(recipe: Recipe, model_dir: Path) -> str:
    if recipe.strategy.pooling in ("mean", "cls"):
        return recipe.strategy.pooling
    # An architecture's pooler is trained (if at all) on the next-sentence task, not for features: pool the tokens.
    return sentence_transformers_pooling(model_dir) or "mean"


def layer_features(
    accelerator: Accelerator, recipe: Recipe, source: Resolved, sample: Dataset, id2label: dict[int, str], pooling: str
) -> tuple[torch.Tensor, torch.nn.Module, Any, float]:
    """Pooled features of every hidden state for the sample, through the feature cache (one file per layer), the
    pooled model, its tokenizer, and the frozen forward throughput in examples per second."""
    from .anatomy import encoder_layers
    from .features import FeatureCache, _cached_on_every_rank, extract_layer_features, hidden_state_layer

    tokenizer = load_tokenizer(source.location, recipe)
    # The probe reads the pooled states as they are (not unit length, whatever the checkpoint's default): the skill
    # thresholds above were calibrated on those features with PROBE_C.
    probe_strategy = recipe.strategy.model_copy(update={"kind": "head", "normalize": False})
    probe_recipe = recipe.model_copy(update={"strategy": probe_strategy})
    model = build_model(probe_recipe, source.location, id2label, pooling).to(accelerator.device)
    model.requires_grad_(False)
    splits = DatasetDict({"advise": sample})
    tokenized = tokenize_splits(DatasetDict({"train": sample}), tokenizer, recipe.data.max_length)["train"]
    states = len(encoder_layers(model)[1]) + 1
    caches = [
        FeatureCache.for_run(
            recipe, source, tokenizer, pooling, splits, model, TEXT_FEATURES, layer=hidden_state_layer(i)
        )
        for i in range(states)
    ]
    batch = recipe.training.eval_batch_size or recipe.training.batch_size * 2
    cached = [_cached_on_every_rank(accelerator, c, "advise", len(sample)) if c else None for c in caches]
    if all(f is not None for f in cached):
        features = torch.stack(cached)
        # The throughput still has to be measured for the time estimate: a timed pass over a small slice.
        timed = tokenized.select(range(min(len(tokenized), 4 * batch)))
        started = time.perf_counter()
        extract_layer_features(accelerator, model, timed, tokenizer, batch, "advise: timing")
        throughput = len(timed) / max(time.perf_counter() - started, 1e-6)
    else:
        started = time.perf_counter()
        features = extract_layer_features(accelerator, model, tokenized, tokenizer, batch, "advise: features")
        throughput = len(tokenized) / max(time.perf_counter() - started, 1e-6)
        if accelerator.is_main_process:
            for cache, layer in zip(caches, features, strict=True):
                if cache is not None:
                    cache.store("advise", layer)
        accelerator.wait_for_everyone()
    if features.shape[0] != states:
        logger.warning(
            "%d hidden states for %d layers: depths are counted from the hidden states", len(features), states
        )
    return features, model, tokenizer, throughput


def advise(
    recipe_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    output_dir: str | Path | None = None,
    sample: int = DEFAULT_SAMPLE,
    write_recipe: str | Path | None = None,
    pilot: bool = False,
) -> dict[str, Any] | None:
    """Measure, probe and recommend; write `advise.json` and `advise.md` (and the recommended recipe with
    `write_recipe`). Returns the report on the main process, None on the others."""
    from .sources import resolve_model
    from .tasks import prepare_data

    recipe = load_recipe(recipe_path, overrides)
    _check_task(recipe)
    if sample < 2:
        raise RecipeError(f"--sample = {sample}: give at least a few rows per class (default {DEFAULT_SAMPLE})")
    accelerator = Accelerator()  # before anything else asks for the process state (GUIDE: PartialState trap)
    started = time.perf_counter()
    out = Path(output_dir) if output_dir else default_advise_dir(recipe)
    ownership.check_report_files(out, ADVISE_FILES, "advise", replace_own=True)  # before the work, not after
    with accelerator.main_process_first():
        source = resolve_model(recipe.model, recipe.model_revision)
        data = prepare_data(recipe)
    train_split = data.splits["train"]
    rows = stratified_sample(train_split, sample, recipe.training.seed)
    pooling = _pooling_for_probe(recipe, Path(source.location))
    features, model, tokenizer, throughput = layer_features(
        accelerator, recipe, source, rows, data.labels.id2label, pooling
    )
    layers = features.shape[0] - 1
    candidates = ["head", f"partial:{max(1, math.ceil(layers / 3))}", "lora", "full"]
    # Every process trains the pilot runs (they are launched runs too); only the main one analyses and writes.
    pilot_results = _pilot(recipe_path, overrides, candidates, out / "pilot", sample) if pilot else None
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    stats = data_statistics(train_split, rows, data.labels.id2label, tokenizer, recipe.data.max_length)
    texts = list(rows["text"])
    domain = {"data": tokenizer_rates(tokenizer, texts), "reference": tokenizer_rates(tokenizer, REFERENCE_SENTENCES)}
    domain["unknown_token_rate_excess"] = round(
        domain["data"]["unknown_token_rate"] - domain["reference"]["unknown_token_rate"], 4
    )
    domain["split_word_rate_excess"] = round(
        domain["data"]["split_word_rate"] - domain["reference"]["split_word_rate"], 4
    )
    probe = probe_layers(features, np.asarray(list(rows["label"])), recipe.training.seed)
    domain["frozen_top_layer_accuracy"] = probe[-1]["accuracy"]
    domain["frozen_top_layer_skill"] = round(skill(probe[-1]["accuracy"], stats["majority_rate"]), 4)
    recommendation = recommend(probe, stats)
    if domain["unknown_token_rate_excess"] > UNKNOWN_EXCESS or domain["split_word_rate_excess"] > SPLIT_EXCESS:
        recommendation["reasons"].append(
            "the text is far from the tokenizer's training text (see the distance figures): expect a frozen "
            "backbone to do worse than on everyday English"
        )
    eval_examples = sum(len(s) for name, s in data.splits.items() if name != "train")
    if recommendation["spec"] not in candidates:
        candidates.insert(0, recommendation["spec"])
    estimates = estimate_costs(
        model, recipe, source, data.labels.id2label, candidates, throughput, stats, eval_examples
    )
    recommendation["estimate"] = estimates[recommendation["spec"]]
    recommendation["overrides"] = _recommended_overrides(recipe, recommendation, source, pooling)
    report: dict[str, Any] = {
        "recipe": str(recipe_path),
        "model": recipe.model,
        "pooling": pooling,
        "output_dir": str(out),
        "recommendation": recommendation,
        "probe": probe,
        "data": stats,
        "domain": domain,
        "estimates": estimates,
        "encode_examples_per_s": round(throughput, 2),
        "advise_s": 0.0,
    }
    if pilot_results is not None:
        report["pilot"] = pilot_results
    report["advise_s"] = round(time.perf_counter() - started, 2)
    ownership.claim_report_files(out, ADVISE_FILES, "advise", replace_own=True)
    (out / "advise.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "advise.md").write_text(render_markdown(report), encoding="utf-8")
    if write_recipe:
        write_recommended_recipe(recipe_path, overrides, recommendation, Path(write_recipe))
        report["written_recipe"] = str(write_recipe)
    accelerator.wait_for_everyone()
    return report


def _recommended_overrides(
    recipe: Recipe, recommendation: dict[str, Any], source: Resolved, pooling: str
) -> list[str]:
    from .compare import parse_spec, recipe_tree_with
    from .recipe import recipe_from_dict
    from .tasks import choose_pooling

    _, overrides = parse_spec(recommendation["spec"], recipe)
    overrides.append(f"training.lr={RECOMMENDED_LR[recommendation['strategy']]}")
    variant = recipe_from_dict(recipe_tree_with(recipe, overrides), "advise")
    if recommendation["strategy"] == "head" and choose_pooling(variant, Path(source.location)) != pooling:
        overrides.append(f"strategy.pooling={pooling}")  # the head then pools as the probe did
    return overrides


def write_recommended_recipe(
    recipe_path: str | Path, overrides: list[str] | tuple[str, ...], recommendation: dict[str, Any], path: Path
) -> Path:
    """The user's recipe file with its overrides and the recommendation applied (the keys it had, not every default),
    validated, opening with its launch command and the reasons."""
    import yaml

    from .recipe import apply_overrides

    every = list(overrides) + recommendation["overrides"]
    load_recipe(recipe_path, every)  # validates exactly what is written below
    tree = apply_overrides(yaml.safe_load(Path(recipe_path).read_text(encoding="utf-8")), every)
    header = (
        f"# accelerate launch -m hf_transfer train {path}\n"
        f"# Recommended by `hf-transfer advise {recipe_path}`: {recommendation['spec']}.\n"
        + "".join(f"# - {reason}\n" for reason in recommendation["reasons"])
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(tree, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _pilot(
    recipe_path: str | Path, overrides: list[str] | tuple[str, ...], specs: list[str], folder: Path, sample: int
) -> list[dict[str, Any]] | None:
    """A short run of each candidate on a slice of train (one epoch), through `compare`."""
    from .compare import compare

    slice_overrides = list(overrides) + [f"training.max_train_samples={sample}", "training.epochs=1"]
    return compare(recipe_path, specs, slice_overrides, output_dir=folder, overwrite=True)


# -- report ----------------------------------------------------------------------------------------------------------


def render_markdown(report: dict[str, Any]) -> str:
    """advise.md: the recommendation and its reasons, then every figure with a line on what it means."""
    rec, data, domain = report["recommendation"], report["data"], report["domain"]
    ref, own = domain["reference"], domain["data"]
    lines = [
        f"# Advice for `{report['recipe']}`",
        "",
        f"**Recommendation: `{rec['spec']}`** (learning rate {RECOMMENDED_LR[rec['strategy']]:g}) — "
        f"about {rec['estimate']['train_s']:,.0f} s of training, {rec['estimate']['model_mem_mb']:,.0f} MB for the "
        f"model, {rec['estimate']['trainable_params']:,} trainable parameters.",
        "",
        *[f"- {reason}" for reason in rec["reasons"]],
        "",
        "Apply it: `hf-transfer train RECIPE " + " ".join(rec["overrides"]) + "`, or `--write-recipe PATH`. "
        "Check it: `hf-transfer compare RECIPE --strategies " + ",".join(report["estimates"]) + "`.",
        "",
        "## Data",
        "",
        "| figure | value | what it means |",
        "|---|---|---|",
        f"| training rows | {data['train_examples']:,} | more rows make deeper strategies safer from overfitting |",
        "| rows per class | "
        + ", ".join(f"{k}: {v:,}" for k, v in data["examples_per_class"].items())
        + " | a class with few rows is learned last and scored noisily |",
        f"| imbalance (largest / smallest class) | {data['imbalance']:g} | above ~3, consider "
        "`training.class_weights: balanced` and watch macro-F1, not accuracy |",
        f"| majority-class rate | {data['majority_rate']:.3f} | the accuracy of always guessing the largest class: "
        "the floor every figure below is read against |",
        f"| tokens per row (mean / median / p95 / max) | {data['tokens_mean']:g} / {data['tokens_median']:g} / "
        f"{data['tokens_p95']:g} / {data['tokens_max']} | with special tokens, untruncated |",
        f"| rows truncated at max_length {data['max_length']} | {data['truncated_fraction']:.1%} | these rows lose "
        f"their end; {data['tokens_lost_fraction']:.1%} of all tokens are cut (raise `data.max_length` if it "
        "matters) |",
        "",
        "## Distance from the pretraining domain",
        "",
        "| figure | your data | reference English | what it means |",
        "|---|---|---|---|",
        f"| unknown-token rate | {own['unknown_token_rate']:.2%} | {ref['unknown_token_rate']:.2%} | tokens the "
        "vocabulary cannot represent at all: their meaning is lost before the model sees them |",
        f"| words split into pieces | {own['split_word_rate']:.1%} | {ref['split_word_rate']:.1%} | words the "
        "vocabulary does not hold whole; many more than the reference means unfamiliar vocabulary |",
        f"| pieces per word | {own['pieces_per_word']:.2f} | {ref['pieces_per_word']:.2f} | longer sequences for the "
        "same text, and meanings the model assembles from fragments |",
        f"| frozen top-layer probe accuracy | {domain['frozen_top_layer_accuracy']:.3f} | — | how well the "
        f"pretrained features already separate your classes (skill {domain['frozen_top_layer_skill']:.2f}: 0 = "
        "majority guess, 1 = perfect) |",
        "",
        "## Linear probe by depth",
        "",
        f"A logistic regression on the frozen, {report['pooling']}-pooled features of each layer "
        f"({data['sample_examples']:,} rows, {report['probe'][0]['folds']}-fold cross-validation). Where the best "
        "accuracy lives tells how many top layers must change: layers above the best one only lose information "
        "for this task.",
        "",
        "| hidden state | layers above | probe accuracy | ± (std over folds) |",
        "|---|---|---|---|",
        *[
            f"| {p['name']} | {p['layers_above']} | {p['accuracy']:.3f} | {p['accuracy_std']:.3f} |"
            for p in report["probe"]
        ],
        "",
        "## Estimated cost per strategy",
        "",
        f"From the measured frozen encoding speed ({report['encode_examples_per_s']:,.1f} rows/s) on this machine; "
        "rough (within about 2×). Trainable parameters are exact. Model memory is what training adds for the model: "
        "weights, gradients, AdamW moments and the activations kept for backward (the framework's own few hundred "
        "MB come on top).",
        "",
        "| strategy | trainable params | training time (s) | model memory (MB) |",
        "|---|---|---|---|",
        *[
            f"| `{spec}` | {e['trainable_params']:,} | {e['train_s']:,.0f} | {e['model_mem_mb']:,.1f} |"
            for spec, e in report["estimates"].items()
        ],
    ]
    if report.get("pilot"):
        lines += [
            "",
            "## Pilot (one epoch on the sample)",
            "",
            "| strategy | accuracy | macro-F1 | wall s |",
            "|---|---|---|---|",
            *[
                f"| `{r['strategy']}` | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['wall_s']:.1f} |"
                for r in report["pilot"]
            ],
        ]
    return "\n".join(lines) + "\n"
