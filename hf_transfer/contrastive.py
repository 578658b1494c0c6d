"""The few-shot strategy `contrastive`: the encoder is fine-tuned with a contrastive loss over class-balanced batches
of the labelled rows themselves (no pair generation), in the project's Accelerate loop; then the head is fitted
with L-BFGS on the tuned encoder's features. Owns its batch order, its loss module and that post-phase."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Sampler
from transformers.modeling_outputs import SequenceClassifierOutput

from .errors import StrategyError

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

    from .recipe import Recipe

logger = logging.getLogger(__name__)

CONTRASTIVE_LOSSES = ("triplet", "pairs")
"""`triplet`: sentence-transformers' batch-all triplet loss (cosine distance) over every valid triplet of the batch;
`pairs`: SetFit's objective, sentence-transformers' CosineSimilarityLoss (cosine similarity regressed onto 1 for a
pair of one class, 0 otherwise), on every pair of rows within the batch instead of generated pairs."""


def pooled_base(model: nn.Module) -> nn.Module:
    """The pooled classifier itself, under its PEFT wrapper when LoRA adapts the encoder."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def active_classifier(model: nn.Module) -> nn.Module:
    """The classifier module the forward pass uses (PEFT's saved copy of it, under LoRA)."""
    classifier = pooled_base(model).classifier
    copies = getattr(classifier, "modules_to_save", None)
    return copies["default"] if copies else classifier


MAX_PASSES = 10
"""An epoch goes over a small train split at most this many times (`strategy.epoch_rows` caps the rows above that):
16 rows (8 a class, two classes) make 160 rows an epoch, the recipe's 4 epochs 40 steps of 16 — SetFit's schedule
there — where 256 rows an epoch took 64 steps, 1.2× SetFit's wall time (RESULTS.md, "Few examples per class")."""


def epoch_rows(configured: int | None, train_rows: int) -> int | None:
    """The rows an epoch draws: `strategy.epoch_rows`, at most `MAX_PASSES` passes over the split (None: one pass)."""
    return None if configured is None else min(configured, MAX_PASSES * train_rows)


class ClassBlockSampler(Sampler[int]):
    """Rows in blocks of `block` rows of one class, the blocks of all classes shuffled together: every batch (a whole
    number of blocks) holds several rows of each of its classes, so every row has positives and negatives in it. An
    epoch draws `rows` rows (None: one pass over every row): a small split is cycled through again, a large one
    sampled, so the contrastive phase costs the same whatever the data's size. The order comes from the loop's
    generator, which it re-seeds every epoch: a resumed run draws the same batches."""

    def __init__(self, labels: list[int], block: int, rows: int | None, generator: torch.Generator):
        self.labels, self.block, self.generator = list(labels), block, generator
        counts = [self.labels.count(label) for label in set(self.labels)]
        # One pass: every class's rows in whole blocks (a short last block is filled from the class's own rows).
        self.length = self._rounded(rows) if rows else sum(self._rounded(count) for count in counts)

    def _rounded(self, rows: int) -> int:
        return -(-rows // self.block) * self.block

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        by_class: dict[int, list[int]] = {}
        for row, label in enumerate(self.labels):
            by_class.setdefault(int(label), []).append(row)
        blocks: list[list[int]] = []
        while sum(len(b) for b in blocks) < self.length:
            for label in sorted(by_class):
                rows = by_class[label]
                order = torch.randperm(len(rows), generator=self.generator).tolist()
                shuffled = [rows[i] for i in order]
                # A class's last, short block is filled from its own start, so no block mixes classes.
                while len(shuffled) % self.block:
                    shuffled.append(shuffled[len(shuffled) % len(rows)])
                blocks += [shuffled[i : i + self.block] for i in range(0, len(shuffled), self.block)]
        order = torch.randperm(len(blocks), generator=self.generator).tolist()
        flat = [row for i in order for row in blocks[i]]
        return iter(flat[: self.length])


def _gathered(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's batch, so the loss of N processes × B/N rows is the loss one process computes on B rows.
    `torch.distributed.nn`'s gather carries gradients back to each rank's own rows (summed over ranks, which DDP's
    average then turns back into the one-process gradient)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embeddings, labels
    from torch.distributed.nn.functional import all_gather

    everyone = torch.cat(all_gather(embeddings))
    label_parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(label_parts, labels)
    return everyone, torch.cat(label_parts)


class ContrastiveModel(nn.Module):
    """What the loop steps during the contrastive phase: the pooled model's sentence embeddings under a
    sentence-transformers loss. In eval mode it is the pooled model (its logits): the loop scores it as any other."""

    def __init__(self, model: nn.Module, loss: str, margin: float):
        super().__init__()
        from sentence_transformers.sentence_transformer.losses import BatchAllTripletLoss, CosineSimilarityLoss
        from sentence_transformers.sentence_transformer.losses.batch_hard_triplet import (
            BatchHardTripletLossDistanceFunction,
        )

        self.model = model
        self.config = pooled_base(model).config
        self.loss = loss
        # The library's losses take the SentenceTransformer only to embed inputs; here the embeddings come in ready.
        self.triplet = BatchAllTripletLoss(None, BatchHardTripletLossDistanceFunction.cosine_distance, margin)
        self.pairs = CosineSimilarityLoss(None)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        base = pooled_base(self.model)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = getattr(base, base.base_model_prefix)(**inputs).last_hidden_state
        embeddings = base.pool(hidden, attention_mask)
        if not self.training or labels is None:
            return SequenceClassifierOutput(logits=active_classifier(self.model)(base.dropout(embeddings)))
        return SequenceClassifierOutput(loss=self.contrastive_loss(embeddings, labels))

    def contrastive_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings, labels = _gathered(embeddings, labels)
        if self.loss == "triplet":
            return self.triplet.batch_all_triplet_loss(labels, embeddings)
        first, second = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
        same = (labels[first] == labels[second]).float()
        return self.pairs.compute_loss_from_embeddings([embeddings[first], embeddings[second]], same)


def apply_contrastive(model: nn.Module, recipe: Recipe, task: Any) -> nn.Module:
    """The encoder trains (all of it, or LoRA adapters with `strategy.r`); the classifier waits for its L-BFGS fit."""
    s = recipe.strategy
    if s.r is None:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = not name.startswith("classifier.")
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=s.r,
        lora_alpha=s.alpha or 2 * s.r,
        lora_dropout=s.dropout,
        target_modules=s.target_modules or "all-linear",
        # Saved with the adapter, so `adapter/` holds the fitted head; it is not trained by gradient steps.
        modules_to_save=["classifier"],
        exclude_modules=["classifier"],
    )
    peft_model = get_peft_model(model, config)
    for name, parameter in peft_model.named_parameters():
        if "classifier" in name:
            parameter.requires_grad = False
    return peft_model


def check_contrastive(model: nn.Module, recipe: Recipe, task: Any) -> None:
    """What the contrastive strategy needs: one class per row and the pooled sentence embedding it tunes."""
    from .pooled import is_pooled

    t = recipe.training
    if not task.single_label:
        raise StrategyError(f"strategy.kind 'contrastive' needs one class per row, not task {task.name!r}")
    if not is_pooled(model):
        raise StrategyError(
            "strategy.kind 'contrastive' tunes the pooled sentence embedding: set strategy.pooling to 'mean' or 'cls'"
        )
    for key, used in (
        ("eval_every", t.eval_every),
        ("early_stopping_patience", t.early_stopping_patience),
        ("balanced_sampler", t.balanced_sampler),
    ):
        if used:
            raise StrategyError(
                f"training.{key} does not apply to strategy.kind 'contrastive': its batches are class-balanced "
                "already, and there is no classifier to score until its head is fitted after the last epoch"
            )


def fit_head_on_tuned_features(
    accelerator: Accelerator,
    model: nn.Module,
    train_split: Dataset,
    preprocessor: Any,
    batch_size: int,
    recipe: Recipe,
    class_weight: torch.Tensor | None,
    metric: str,
) -> dict[str, float]:
    """After the last epoch: the tuned encoder embeds every train row once, and the classifier is fitted on those
    features with L-BFGS (features.fit_logistic_head, C by cross-validation on train)."""
    from datasets import DatasetDict

    from .features import extract_features, feature_datasets, fit_logistic_head

    base = pooled_base(model)
    splits = DatasetDict({"train": train_split})
    features = feature_datasets(accelerator, base, splits, preprocessor, batch_size, extract_features)
    weights = None if class_weight is None else dict(enumerate(class_weight.tolist()))
    fitted = fit_logistic_head(
        accelerator, active_classifier(model), features["train"], recipe.strategy.head, weights, metric
    )
    logger.info("contrastive: head fitted on the tuned encoder's features of %d train rows", len(train_split))
    return fitted
