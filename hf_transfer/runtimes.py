"""The runtimes an output folder serves with: eager PyTorch, or its ONNX export (fp32 or int8) under ONNX Runtime.

Owns the `onnx/` folder as a reader: its manifest (written by `onnx_export.py`), the check that the export still
matches the weights it came from, which runtime to use, and the ONNX Runtime session over numpy that both the torch
stand-in (`onnx_model.py`) and the torch-free text path (`onnx_text.py`) run; it imports neither torch nor
transformers, so that path stays light. An int8 classifier is guarded: a row whose int8 answer is closer to another
answer than int8's error measured at export (`guard.margin`) is answered again by the fp32 graph, so int8 keeps
fp32's labels."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError
from .fileio import file_sha256
from .run_folder import ADAPTER_DIR, RunFolder

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
MANIFEST = "manifest.json"
RUNTIMES = ("torch", "onnx", "onnx-int8")
VARIANT_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
FASTEST_FIRST = ("onnx-int8", "onnx")
"""The order the default runtime is picked in, among the variants whose parity passed at export."""
INSTALL_HINT = "install the `onnx` extra: pip install 'hf-transfer-recipes[onnx]'"


def weight_checksums(folder: RunFolder) -> dict[str, str]:
    """sha256 of what an export is made from: config.json (labels, pooling), the safetensors weights and a LoRA's
    adapter weights (the Space of an adapter repo checks those, as the merged weights are not pushed)."""
    files = {n: p for n, p in folder.listing().items() if n == "config.json" or n.endswith(".safetensors")}
    for name, path in folder.listing(ADAPTER_DIR).items():
        if name.endswith(".safetensors"):
            files[f"{ADAPTER_DIR}/{name}"] = path
    return {name: file_sha256(path) for name, path in sorted(files.items())}


def read_export(folder: RunFolder) -> dict[str, Any] | None:
    """The folder's ONNX manifest once its files and the weights it was exported from are checked; None when the
    folder has no export. A stale or altered export is an ExportError, never used."""
    manifest = folder.json(f"{ONNX_DIR}/{MANIFEST}")
    if not manifest:
        return None
    again = f"run `hf-transfer export {folder.path}` again, or pass --runtime torch"
    now = weight_checksums(folder)
    recorded = manifest.get("weights") or {}
    changed = sorted(name for name in set(recorded) | set(now) if recorded.get(name) != now.get(name))
    if changed:
        raise ExportError(
            f"{folder.path}/{ONNX_DIR} is stale: it was exported from other weights ({', '.join(changed)} changed "
            f"since the export, sha256 differs); {again}"
        )
    for runtime, variant in (manifest.get("variants") or {}).items():
        path = folder.file(f"{ONNX_DIR}/{variant.get('file')}")
        if path is None or file_sha256(path) != variant.get("sha256"):
            state = "is missing" if path is None else "is not the file the export wrote (sha256 differs)"
            raise ExportError(f"{folder.path}/{ONNX_DIR}/{variant.get('file')} ({runtime}) {state}; {again}")
    return manifest


def passed(manifest: dict[str, Any], runtime: str) -> bool:
    """Whether the export's parity check against PyTorch passed for this variant."""
    return bool(((manifest.get("variants") or {}).get(runtime) or {}).get("parity", {}).get("passed"))


def choose_runtime(folder: RunFolder, requested: str | None = None) -> str:
    """`requested`, checked; by default the fastest ONNX variant whose recorded parity passed, else `torch`.

    `torch` never reads `onnx/`, so a folder without an export (or a user asking for torch) behaves as before.
    """
    if requested is not None and requested not in RUNTIMES:
        raise ExportError(f"runtime {requested!r} is unknown; choose from {', '.join(RUNTIMES)}")
    if requested == "torch":
        return "torch"
    manifest = read_export(folder)
    if requested is None:
        found = [r for r in FASTEST_FIRST if manifest and passed(manifest, r)]
        return found[0] if found else "torch"
    if manifest is None or requested not in (manifest.get("variants") or {}):
        flag = " --int8" if requested == "onnx-int8" else ""
        raise ExportError(
            f"{folder.path} has no {requested} export ({ONNX_DIR}/{VARIANT_FILES[requested]}); run "
            f"`hf-transfer export {folder.path}{flag}` first"
        )
    if not passed(manifest, requested):
        logger.warning(
            "%s: the %s export did not pass its parity check at export (onnx/%s)", folder.path, requested, MANIFEST
        )
    return requested


_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}


def answer_margins(logits: np.ndarray, multi_label: bool) -> np.ndarray | None:
    """How far each row's answer is from changing: the top logit minus the runner-up (which class wins), or for
    multi-label the smallest |logit| (which side of 0.5 each label's sigmoid falls). None when a row has no one answer
    to change: one output (regression), or one answer per token (token classification)."""
    if logits.ndim != 2 or logits.shape[-1] < 2:
        return None
    if multi_label:
        return np.abs(logits).min(-1)
    top_two = np.partition(logits, -2, axis=-1)[..., -2:]
    return top_two[..., 1] - top_two[..., 0]


def answer_errors(got: np.ndarray, expected: np.ndarray, multi_label: bool) -> np.ndarray:
    """How much a margin of `answer_margins` can move from `expected` to `got`, per row: for one class against
    another, the spread of the logit errors (max - min over classes); for multi-label, the largest |logit error|."""
    error = got - expected
    return np.abs(error).max(-1) if multi_label else error.max(-1) - error.min(-1)


def rows_to_recheck(logits: np.ndarray, margin: float, multi_label: bool) -> np.ndarray | None:
    """The rows whose answer is within `margin` of changing: those the guard answers again in fp32 (None: no rows can
    be, see `answer_margins`)."""
    margins = answer_margins(logits, multi_label)
    return None if margins is None else margins < margin


class OnnxSession:
    """An ONNX Runtime session over numpy: the graph's named inputs in, its `logits` out. Needs no torch, so the
    torch-free text path (`onnx_text.py`) and the torch stand-in (`onnx_model.py`) share it, guard included."""

    def __init__(self, path: Path, multi_label: bool = False, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ExportError(f"the ONNX runtimes need onnxruntime: {INSTALL_HINT}") from None
        options = onnxruntime.SessionOptions()
        # Idle pool threads spin by default; on a shared 2-CPU machine they burn the CPU the busy ones need (1,821
        # SST-2 sentences, int8, under load ~6: 10 s without spinning, 16-26 s with).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        self.multi_label = multi_label
        self.input_types = {i.name: _NUMPY_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.fallback: OnnxSession | None = None
        """The fp32 session that answers again the rows `rows_to_recheck` finds within `margin` (an int8 one's)."""
        self.margin = 0.0
        self.rechecked = 0
        """Rows the fallback answered so far."""

    def guard_with(self, fallback: OnnxSession, margin: float) -> None:
        self.fallback, self.margin = fallback, margin

    def rows_to_recheck(self, logits: np.ndarray) -> np.ndarray | None:
        """The rows of these (int8) logits that the guard answers again in fp32; None without a guard."""
        return None if self.fallback is None else rows_to_recheck(logits, self.margin, self.multi_label)

    def logits(self, inputs: dict[str, Any], guard: bool = True) -> np.ndarray:
        """The logits for the graph's inputs (arrays, or anything numpy converts); None values are left out. With
        `guard`, the rows `rows_to_recheck` finds are answered again by the fallback within this batch (a caller
        that rechecks many batches' rows together, in fuller batches, passes False)."""
        given = {name: value for name, value in inputs.items() if value is not None}
        if set(given) != set(self.input_types):
            raise ExportError(
                f"{self.path} takes {sorted(self.input_types)}, but the model was called with {sorted(given)}; "
                "export the folder again with this hf_transfer"
            )
        feed = {name: np.asarray(value, dtype=self.input_types[name]) for name, value in given.items()}
        (logits,) = self.session.run(["logits"], feed)
        if guard and self.fallback is not None:
            again = self.rows_to_recheck(logits)
            if again is not None and again.any():
                (logits[again],) = self.fallback.session.run(["logits"], {k: v[again] for k, v in feed.items()})
                self.rechecked += int(again.sum())
        return logits


def load_onnx_session(folder: RunFolder, runtime: str, multi_label: bool = False) -> OnnxSession:
    """The session of a runtime `choose_runtime` returned (its files already checked against the manifest), with
    its guard when the export recorded one (the fp32 graph and the margin below which it answers again)."""

    def variant_session(name: str) -> OnnxSession:
        path = folder.file(f"{ONNX_DIR}/{VARIANT_FILES[name]}")
        if path is None:
            raise ExportError(f"{folder.path}/{ONNX_DIR}/{VARIANT_FILES[name]} is missing")
        return OnnxSession(path, multi_label)

    guard = ((folder.json(f"{ONNX_DIR}/{MANIFEST}") or {}).get("variants", {}).get(runtime) or {}).get("guard")
    session = variant_session(runtime)
    if guard:
        fallback = guard.get("fallback")
        if fallback not in VARIANT_FILES or fallback == runtime or not isinstance(guard.get("margin"), int | float):
            raise ExportError(
                f"{folder.path}/{ONNX_DIR}/{MANIFEST}: the {runtime} guard is not one export writes ({guard}); run "
                f"`hf-transfer export {folder.path}` again, or pass --runtime onnx"
            )
        session.guard_with(variant_session(fallback), float(guard["margin"]))
    return session
