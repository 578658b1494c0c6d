"""Frozen image backbones as feature extractors: the feature is what an image model's classifier reads (the input of
its classifier module, after the model's own global pooling), computed once per image with the model's own
preprocessing, so a frozen-backbone image run trains its head on cached features as text runs do
(`hf_transfer/features.py` owns the cache and the heads; this module owns what is image-specific)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.modeling_outputs import ImageClassifierOutput

from .anatomy import head_module_names
from .images import image_contents

IMAGE_FEATURE_LAYER = "classifier_input"
"""The cache's `layer` key for image features: the input of the model's classifier module."""
PASS_THROUGH = (nn.Flatten, nn.Identity, nn.Dropout)
"""Modules a classifier may hold besides its one linear layer: identities on pooled [rows, features] input in eval."""


def image_classifier(model: nn.Module) -> nn.Module | None:
    """The classifier module of an image model (ViT's `classifier`, ResNet's `classifier` = Flatten + Linear, timm's
    `timm_model.classifier`) when it is one linear layer on the pooled features and all that trains; else None."""
    if getattr(model, "main_input_name", None) != "pixel_values":
        return None
    names = head_module_names(model)
    if len(names) != 1:
        return None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable or not all(n.startswith(names[0] + ".") for n in trainable):
        return None
    classifier = model.get_submodule(names[0])
    if isinstance(classifier, nn.Linear):
        return classifier
    parts = list(classifier) if isinstance(classifier, nn.Sequential) else []
    one_linear = sum(isinstance(m, nn.Linear) for m in parts) == 1
    if not one_linear or not all(isinstance(m, (nn.Linear, *PASS_THROUGH)) for m in parts):
        return None  # a classifier of its own kind computes more than a linear map: it trains on the images
    return classifier


class ImageFeatureHead(nn.Module):
    """An image model's own classifier applied to cached features, with the model's single-label loss. Dropout that
    some backbones apply before their classifier in training (timm's `drop_rate`) is not applied here."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.config = model.config
        self.classifier = image_classifier(model)  # the same module: training it trains the full model's head

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        logits = self.classifier(features)
        return ImageClassifierOutput(loss=None if labels is None else F.cross_entropy(logits, labels), logits=logits)


def _pixels_only(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows])}


@torch.inference_mode()
def extract_image_features(
    accelerator: Accelerator, model: nn.Module, dataset: Dataset, batch_size: int, desc: str
) -> torch.Tensor:
    """The classifier's input for every image, in dataset order, from the split's own transform (the processor's
    resize and centre crop: exactly what the saved model sees at inference). Batches are shared across processes;
    `gather_for_metrics` returns each row once."""
    classifier = image_classifier(accelerator.unwrap_model(model))
    captured: list[torch.Tensor] = []
    hook = classifier.register_forward_pre_hook(lambda module, args: captured.append(args[0].flatten(1)))
    # Its own generator, as for text: a loader drawing from the global RNG would shift every later random draw.
    loader = accelerator.prepare(
        DataLoader(dataset, batch_size=batch_size, collate_fn=_pixels_only, shuffle=False, generator=torch.Generator())
    )
    model.eval()
    chunks = []
    try:
        for batch in tqdm(loader, desc=desc, disable=not accelerator.is_main_process):
            captured.clear()
            model(pixel_values=batch["pixel_values"])
            chunks.append(accelerator.gather_for_metrics(captured[-1]).cpu())
    finally:
        hook.remove()
    return torch.cat(chunks).float()


def image_content_digest(split: Dataset) -> str:
    """The split's images, in order, by content (file bytes, not paths; labels left out, as for text)."""
    digest = hashlib.sha256(b"images")
    for content in image_contents(split):
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


def processor_digest(processor: Any) -> str:
    """What decides the pixels: the image processor's class and every setting (size, crop, mean, std, resample)."""
    tree = {"class": type(processor).__name__, "settings": processor.to_dict()}
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()


def image_feature_head(model: nn.Module) -> nn.Module | None:
    """The image model's own classifier on cached features, when a one-linear-layer classifier is all that trains."""
    return ImageFeatureHead(model) if image_classifier(model) is not None else None
