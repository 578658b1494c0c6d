"""How training rows are drawn and weighted: seeded loaders (length-grouped or balanced), and class weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, SequentialSampler, WeightedRandomSampler
from transformers.trainer_pt_utils import LengthGroupedSampler

from .errors import TrainingError
from .metrics import IGNORED
from .recipe import Recipe


def make_loader(
    dataset: Any,
    batch_size: int,
    collator: Any,
    shuffle: bool,
    lengths: list[int] | None,
    seed: int,
    global_batch: int | None = None,
    sample_weights: list[float] | None = None,
    sampler_factory: Any = None,
):
    """Train batches grouped by length (less padding), drawn by sample weight, or in the order `sampler_factory`
    (generator -> sampler) gives, seeded; eval batches in dataset order."""
    generator = torch.Generator().manual_seed(seed)
    if shuffle and sampler_factory is not None:
        sampler = sampler_factory(generator)
    elif shuffle and sample_weights is not None:
        sampler = WeightedRandomSampler(sample_weights, len(sample_weights), replacement=True, generator=generator)
    elif shuffle and lengths is not None:
        # Grouped by the global batch (all processes, one step): Accelerate deals consecutive per-device batches to
        # the ranks, so N processes x B/N then see exactly the samples one process x B sees, in the same steps.
        sampler = LengthGroupedSampler(global_batch or batch_size, lengths=lengths, generator=generator)
    elif shuffle:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    # The loader draws its worker base seed from this generator, not the global RNG: then only dropout uses the
    # global RNG, which checkpoints restore, and a resumed run is bit-identical to an uninterrupted one.
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator, generator=generator)
    return loader, generator


def class_weights(recipe: Recipe, train_labels: list[Any], id2label: dict[int, str]) -> torch.Tensor | None:
    """`training.class_weights` as one loss weight per label id; None when the loss is unweighted. `train_labels`
    holds one label id per row, or one list of ids per row (a sentence's word-level tags, counted tag by tag)."""
    setting = recipe.training.class_weights
    if setting == "none":
        return None
    if setting == "balanced":
        labels = [tag for row in train_labels for tag in row] if _per_word(train_labels) else train_labels
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(id2label))
        weights = len(labels) / (len(id2label) * np.maximum(counts, 1))  # scikit-learn's "balanced"
    else:
        unknown = sorted(set(setting) - set(id2label.values()))
        if unknown:
            raise TrainingError(
                f"training.class_weights names {unknown[0]!r}, not a label; labels: {sorted(id2label.values())}"
            )
        weights = [setting.get(id2label[i], 1.0) for i in range(len(id2label))]
    return torch.tensor(weights, dtype=torch.float32)


def _per_word(train_labels: list[Any]) -> bool:
    return bool(train_labels) and isinstance(train_labels[0], list | tuple)


def balanced_sample_weights(train_labels: list[int]) -> list[float]:
    """Each row drawn with probability 1 / (classes × rows of its class): every class equally likely."""
    counts = np.bincount(train_labels)
    return (1.0 / counts[np.asarray(train_labels)]).tolist()


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with a weight per class: the weighted losses of the labelled rows (or tokens: `[batch, positions,
    classes]` logits) summed, over the sum of their weights; IGNORED positions count in neither."""
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, -2), labels.flatten(), weight=class_weight, ignore_index=IGNORED
    )
