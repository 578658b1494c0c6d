"""What advise's measurements mean: the thresholds and rules that turn a per-layer probe curve and the data's size
into a strategy, with its reasons in words. Pure functions of the figures, so the rules are read and tested without a
model (`hf_transfer/advise.py` measures the figures)."""

from __future__ import annotations

import math
from typing import Any

HEAD_SKILL = 0.8
"""Top-layer probe skill (accuracy rescaled so the majority class is 0 and perfect is 1) from which a frozen head is
enough."""
WEAK_SKILL = 0.2
"""Below this skill at every layer the frozen features barely beat guessing the majority class."""
PARTIAL_SKILL = 0.6
"""Top-layer skill from which adapting the top of the network is enough; below it (and the top layer being the best)
the features carry the signal but far from separably, so every layer adapts (measured on SST-2 with MiniLM, skill
0.48: partial:2 reached 0.831, LoRA 0.860, full 0.856; see benchmarks/RESULTS.md)."""
MIN_MARGIN = 0.02
"""Probe accuracies closer than this (or two standard errors, if larger) count as equal."""
FULL_MIN_EXAMPLES = 10_000
"""Training rows from which updating every weight is worth its risk of overfitting; below it LoRA adapts every layer
through far fewer parameters."""
RECOMMENDED_LR = {"head": 5e-3, "partial": 1e-4, "lora": 1e-3, "full": 5e-5, "contrastive": 2e-5}
"""Learning rates of the bundled SST-2 recipes, one per strategy, written into the recommended recipe."""
FEW_SHOT_MAX_PER_CLASS = 64
"""Rows per class (the median class) up to which the few-shot strategy `contrastive` is recommended: measured at 8
and 64 per class on SST-2, Banking77 and SMS spam against the frozen L-BFGS head and SetFit (benchmarks/RESULTS.md,
"Few examples per class"); above 64 it was not measured, and the probe-based rules below take over."""
FEW_SHOT_GAIN = (
    "+4.7 points of test accuracy at 8 per class and +3.0 at 64 (five-seed medians, mean over SST-2, Banking77, "
    "SMS spam)"
)
"""What the benchmark measured for `contrastive` over the frozen L-BFGS head, quoted in the reason."""


def skill(accuracy: float, majority: float) -> float:
    """Accuracy rescaled so guessing the majority class is 0 and perfect is 1."""
    return (accuracy - majority) / (1 - majority) if majority < 1 else 0.0


def _deep_choice(train_examples: int) -> dict[str, Any]:
    if train_examples >= FULL_MIN_EXAMPLES:
        return {"strategy": "full"}
    return {"strategy": "lora", "r": 8 if train_examples < 2000 else 16}


def recommend(probe: list[dict[str, Any]], data: dict[str, Any]) -> dict[str, Any]:
    """The strategy the probe curve points to, with the reasons in words. Where the useful features live tells how
    many top layers must change: the highest layer within the margin of the best probe is the one to build on."""
    majority, examples = data["majority_rate"], data["train_examples"]
    top = probe[-1]
    best = max(probe, key=lambda p: p["accuracy"])
    standard_error = best["accuracy_std"] / math.sqrt(best["folds"])
    margin = max(MIN_MARGIN, 2 * standard_error)
    useful = max((p for p in probe if p["accuracy"] >= best["accuracy"] - margin), key=lambda p: p["layer"])
    top_skill, best_skill = skill(top["accuracy"], majority), skill(best["accuracy"], majority)
    layers = top["layer"]
    facts = (
        f"top-layer probe {top['accuracy']:.3f}, best {best['accuracy']:.3f} at {best['name']}, "
        f"majority class {majority:.3f}"
    )
    reasons = [facts]
    per_class = sorted(data.get("examples_per_class", {}).values())
    typical = per_class[(len(per_class) - 1) // 2] if per_class else examples  # the lower median
    if useful is top and top_skill >= HEAD_SKILL:
        choice = {"strategy": "head"}
        reasons.append(
            f"the frozen top-layer features already separate the classes (skill {top_skill:.2f} ≥ {HEAD_SKILL}) and "
            "no lower layer does better: train only a head on them (one encoding pass, the cheapest run)"
        )
    elif typical <= FEW_SHOT_MAX_PER_CLASS:
        choice = {"strategy": "contrastive"}
        reasons.append(
            f"few labelled rows: {typical} per class (median class) ≤ {FEW_SHOT_MAX_PER_CLASS}, and the frozen "
            f"top-layer features are not enough on their own (skill {top_skill:.2f}). With so few rows, fine-tuning "
            "a classifier overfits; the few-shot strategy tunes the sentence encoder with a "
            "contrastive loss over class-balanced batches of these rows, then fits an L-BFGS head on the tuned "
            f"embeddings. Measured over the frozen L-BFGS head: {FEW_SHOT_GAIN} (benchmarks/RESULTS.md, 'Few "
            "examples per class')"
        )
    elif best_skill < WEAK_SKILL:
        choice = _deep_choice(examples)
        reasons.append(
            f"no layer's frozen features get far beyond guessing the majority class (best skill {best_skill:.2f} < "
            f"{WEAK_SKILL}): the labels need representations the pretrained network does not have, so every layer "
            "must adapt"
        )
    elif useful is not top and top["layer"] - useful["layer"] >= layers:
        choice = _deep_choice(examples)
        reasons.append("only the embeddings' features are useful: every layer above them must change")
    elif useful is not top:
        choice = {"strategy": "partial", "layers": top["layer"] - useful["layer"]}
        reasons.append(
            f"the useful features live at {useful['name']} and the {choice['layers']} layer(s) above it lose accuracy "
            f"({useful['accuracy']:.3f} → {top['accuracy']:.3f}): retrain those {choice['layers']} layer(s) + head"
        )
    elif top_skill >= PARTIAL_SKILL:
        choice = {"strategy": "partial", "layers": max(1, math.ceil(layers / 3))}
        reasons.append(
            f"the top layer's frozen features are as good as any layer's and nearly enough (skill {top_skill:.2f}, "
            f"{PARTIAL_SKILL}–{HEAD_SKILL}): adapt the top third of the layers ({choice['layers']}) with the head"
        )
    else:
        choice = _deep_choice(examples)
        reasons.append(
            f"the top layer's frozen features are as good as any layer's but far from separating the classes (skill "
            f"{top_skill:.2f} < {PARTIAL_SKILL}): no depth holds the features this task needs, so every layer adapts"
        )
    if choice["strategy"] in ("lora", "full"):
        reasons.append(
            f"{examples:,} training rows: "
            + (
                "enough to update every weight (full)"
                if choice["strategy"] == "full"
                else f"LoRA (r={choice['r']}) adapts every layer with far fewer trainable parameters than full "
                f"fine-tuning, which would overfit below {FULL_MIN_EXAMPLES:,} rows"
            )
        )
    return {**choice, "spec": strategy_spec(choice), "reasons": reasons, "margin": round(margin, 4)}


def strategy_spec(choice: dict[str, Any]) -> str:
    """`partial:2`, `lora:8`, `head`: the form `hf-transfer compare --strategies` takes."""
    if choice["strategy"] == "partial":
        return f"partial:{choice['layers']}"
    if choice["strategy"] == "lora" and choice.get("r"):
        return f"lora:{choice['r']}"
    return choice["strategy"]
