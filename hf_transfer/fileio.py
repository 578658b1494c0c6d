"""Small file helpers every layer uses: JSON read and atomic write, JSON lines, and file hashes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def read_json(path: Path) -> dict:
    """A JSON file's content, or {} when the file is absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def append_jsonl(path: Path, entry: dict[str, Any], is_main: bool) -> None:
    if is_main:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def rewrite_jsonl(path: Path, entries: list[dict[str, Any]], is_main: bool) -> None:
    """Replace a JSON-lines file with `entries` (written to a temporary file, then renamed)."""
    if is_main:
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")
        os.replace(temporary, path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
