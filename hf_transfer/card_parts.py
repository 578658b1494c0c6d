"""The pieces a model card is built from that tasks contribute to: markdown tables, short cells, the facts of a run
that decide which recipe keys mattered, and the `TaskCard` record of a task's own card sections."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return number(value).replace("|", "\\|").replace("\n", " ")

    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell(v) for v in line) + " |" for line in lines)


@dataclass(frozen=True)
class RunFacts:
    """What decides which recipe keys mattered: read once from run.json, metrics.json and the resolved recipe."""

    task: str
    strategy: str
    head_type: str
    pooled: bool
    """The head reads mean/CLS-pooled features (the project's pooled head), not the architecture's own head."""
    on_features: bool
    """The head trained on cached features of the frozen backbone (metrics.json `train.trained_on`)."""
    warm_up: bool
    crop: bool


Applies = Callable[[RunFacts], bool]


def always(facts: RunFacts) -> bool:
    return True


def by_gradient(facts: RunFacts) -> bool:
    """Optimizer settings: everything but the L-BFGS head, which is fitted, not stepped."""
    return facts.head_type != "lbfgs"


@dataclass(frozen=True)
class TaskCard:
    """The card parts one pipeline tag renders its own way."""

    usage: Callable[[str, list[dict], bool, bool], str]
    """(repo ID, examples, needs its own code, is an adapter) -> Python snippet."""
    examples: Callable[[list[dict]], str]
    per_class: Callable[[dict], str]
    keys: dict[str, Applies]
    """The task's own recipe keys, with when each shapes the weights."""


def short(text: object, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def per_class_table(run: dict, title: str) -> str:
    per_class = run.get("per_class") or {}
    if not per_class:
        return ""
    keys = ["precision", "recall", "f1", "support"]
    rows = [[label, *(values.get(k, "") for k in keys)] for label, values in per_class.items()]
    return f"### {title} ({run.get('eval_split', 'evaluation')} split)\n\n" + table(["label", *keys], rows)
