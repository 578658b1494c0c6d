"""Reading a finished output folder (run.json, metrics.json, config.json, recipe.yaml, its adapter), with one rule:
nothing outside the folder is read through it. Every path resolves inside the folder (symlinks followed); an absolute
path, a `..` or a link that leads out is skipped with a warning."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from .fileio import read_json

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
EXAMPLE_FILE_KEYS = ("image",)
"""Fields of run.json's `examples` that name a file in the folder rather than hold the input itself."""


class RunFolder:
    """One output folder. Its records are read on first use and kept; a record that is absent reads as {} or ""."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.root = self.path.resolve()

    def file(self, relative: object, named_by: str | None = None) -> Path | None:
        """The resolved file `relative` names when it lies inside the folder, else None.

        A path that would lead outside (absolute, `..`, a symlink out) is refused with a warning; so is a missing
        file when `named_by` says which record named it (a missing file nobody asked for is simply absent).
        """
        where = f"{named_by} " if named_by else ""
        if not isinstance(relative, str) or not relative.strip():
            logger.warning("%s: %s%r is not a file path; skipped", self.path, where, relative)
            return None
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            logger.warning("%s: %s%r is not a path inside the folder; skipped", self.path, where, relative)
            return None
        resolved = (self.root / relative).resolve()
        if not resolved.is_relative_to(self.root):
            logger.warning("%s: %s%r leads outside the folder (to %s); skipped", self.path, where, relative, resolved)
            return None
        if not resolved.is_file():
            if named_by:
                logger.warning("%s: %s%r is not a file in the folder; skipped", self.path, where, relative)
            return None
        return resolved

    def listing(self, sub: str = "") -> dict[str, Path]:
        """The files directly in the folder (or its subfolder `sub`): name -> resolved path, inside the folder only."""
        directory = self.path / sub
        if not directory.is_dir():
            return {}
        files = {}
        for entry in sorted(directory.iterdir()):
            relative = f"{sub}/{entry.name}" if sub else entry.name
            if entry.is_dir() and not entry.is_symlink():
                continue
            path = self.file(relative, "the folder's listing" if entry.is_symlink() else None)
            if path is not None:
                files[entry.name] = path
        return files

    def json(self, name: str) -> dict[str, Any]:
        path = self.file(name)
        return read_json(path) if path is not None else {}

    def text(self, name: str) -> str:
        path = self.file(name)
        return path.read_text(encoding="utf-8") if path is not None else ""

    @functools.cached_property
    def run(self) -> dict[str, Any]:
        """run.json: what trained, on what, with which results and examples (written by outputs.py)."""
        return self.json("run.json")

    @functools.cached_property
    def metrics(self) -> dict[str, Any]:
        return self.json("metrics.json")

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """config.json of the saved model, raw (auto_map, labels, model_type)."""
        return self.json("config.json")

    @functools.cached_property
    def recipe_text(self) -> str:
        """The resolved recipe as saved in the folder (local paths included: it is for this machine)."""
        return self.text("recipe.yaml")

    @functools.cached_property
    def adapter(self) -> bool:
        """Whether the folder holds a PEFT adapter in `adapter/` (a LoRA run)."""
        return self.file(f"{ADAPTER_DIR}/adapter_config.json") is not None

    def examples(self) -> list[dict[str, Any]]:
        """run.json's evaluation examples whose files (an example's `image`) lie inside the folder; others dropped."""
        kept = []
        for index, example in enumerate(self.run.get("examples") or []):
            if not isinstance(example, dict):
                continue
            named = [key for key in EXAMPLE_FILE_KEYS if key in example]
            if all(self.file(example[key], f"run.json examples[{index}].{key}") for key in named):
                kept.append(example)
        return kept
