"""Predicting over long inputs (`predict --file`): read lazily, batch by length, answer in input order, in bounded
memory, with a progress bar on stderr.

Inputs are taken a chunk at a time; each chunk is sorted by length before the task's predict batches it, so a batch
holds texts of similar length and pads little, and its results are put back in input order before the chunk is
written. Memory is bounded by the chunk, not the file."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Protocol, TextIO

from tqdm import tqdm

from .errors import DataError


class Predictor(Protocol):
    """What streaming needs of a loaded run: `inference.LoadedRun` (any task and runtime) and `onnx_text.OnnxTextRun`
    (a text task's ONNX export, torch-free) both are one."""

    def predict(self, inputs: list[str]) -> list[Any]: ...

    def read_inputs(self, path: Path) -> list[str]: ...

    def format_result(self, value: str, result: Any) -> str: ...


CHUNK = 2048
"""Inputs held at once: enough for 64 length-sorted batches of 32."""
PROGRESS_FROM = 1000
"""Inputs from which a progress bar is shown."""


def _text_lines(path: Path) -> Iterator[str]:
    """A .txt file's non-blank lines, stripped, one at a time (UTF-8; an error names the first line that is not)."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                where = f"line {number} is not UTF-8 text (byte {offset + error.start})"  # as data.read_text says it
                raise DataError(f"{path}: {where}; re-save the file as UTF-8") from None
            offset += len(raw)
            if line:
                yield line


def _count_lines(path: Path) -> int:
    """The inputs of a .txt file, read once before predicting: a line that is not UTF-8 fails before any output."""
    return sum(1 for _ in _text_lines(path))


def file_inputs(run: Predictor, path: Path) -> tuple[Iterable[str], int]:
    """The inputs of a --file and how many there are: a .txt file streams line by line; a table is read by the task."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise DataError(f"{path}: no such file (--file)")
    if path.suffix.lower() == ".txt":
        return _text_lines(path), _count_lines(path)
    values = run.read_inputs(path)
    return values, len(values)


def predict_stream(run: Predictor, inputs: Iterable[str], total: int | None = None) -> Iterator[tuple[str, Any]]:
    """(input, result) for every input, in input order, predicted in length-sorted chunks of CHUNK inputs."""
    progress = tqdm(
        total=total, desc="predicting", unit=" inputs", file=sys.stderr, disable=(total or 0) < PROGRESS_FROM
    )
    iterator = iter(inputs)
    with progress:
        while chunk := list(islice(iterator, CHUNK)):
            order = sorted(range(len(chunk)), key=lambda i: len(chunk[i]))
            results = run.predict([chunk[i] for i in order])
            placed: list[Any] = [None] * len(chunk)
            for position, result in zip(order, results, strict=True):
                placed[position] = result
            yield from zip(chunk, placed, strict=True)
            progress.update(len(chunk))


def write_results(run: Predictor, pairs: Iterable[tuple[str, Any]], as_json: bool, out: TextIO) -> int:
    """Write each result as it comes: the task's line, or the items of one JSON array (the same text that
    `json.dumps(results, indent=2)` gives). Returns how many were written."""
    count = 0
    for value, result in pairs:
        if as_json:
            item = json.dumps(result, indent=2).replace("\n", "\n  ")
            out.write(("[\n  " if count == 0 else ",\n  ") + item)
        else:
            out.write(run.format_result(value, result) + "\n")
        count += 1
    if as_json:
        out.write("\n]\n" if count else "[]\n")
    return count
