"""`hf-transfer export`: an output folder's model as an ONNX graph (and its int8 variant) in `onnx/`, with a manifest.

Task-generic by construction: the model is traced with the very tensors the task's own `predict` feeds it (so the
graph's inputs are whatever the task's preprocessor produces: token ids and masks, pixel values), batch and sequence
axes dynamic, one output `logits`. Parity against PyTorch is measured at export on real inputs — the folder's
evaluation examples, batched (with padding) and one by one, plus a text longer than the model's maximum (truncation),
and up to `CALIBRATION_ROWS` rows of the recipe's validation split as the task encodes them for `evaluate` — and
recorded in the manifest beside the checksums of the ONNX files and of the weights they came from. The same rows
calibrate the int8 model's guard (`runtimes.OnnxSession`): the margin below which an int8 answer is checked in fp32."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict
from torch.utils.data import DataLoader

from .answers import TEXT_ANSWERS
from .errors import ExportError, one_line
from .fileio import file_sha256, write_json_atomic
from .inference import LoadedRun, load_run
from .onnx_fusions import fuse, quiet_root_logger
from .onnx_text import tokenizer_record
from .run_folder import EXAMPLE_FILE_KEYS, RunFolder
from .runtimes import (
    INSTALL_HINT,
    MANIFEST,
    ONNX_DIR,
    VARIANT_FILES,
    OnnxSession,
    answer_errors,
    answer_margins,
    weight_checksums,
)
from .sources import resolve_dataset_source

logger = logging.getLogger(__name__)

OPSET = 18
FP32_TOLERANCE = 1e-4
"""fp32 parity: the largest absolute logit difference from PyTorch allowed."""
INT8_AGREEMENT = 0.99
"""int8 parity: the share of rows (of positions, for per-token logits) that must keep PyTorch's top class."""
SINGLE_ROWS = 8
"""How many inputs are also checked one by one (batch size 1: no padding at all)."""
QUANTIZATION = {
    "method": "dynamic",
    "weight_type": "int8",
    "per_channel": True,
    "op_types": ["MatMul", "Gemm", "Attention"],
}
"""Dynamic int8 of the weight matrices, per output channel, a fused attention's packed Q/K/V projection included
(`QAttention`, see `onnx_fusions.py`: 4.3 s against 5.0 s for the MiniLM over SST-2 test in ONNX Runtime).
Per-tensor scales flipped 4.8 % of SST-2 test labels of the MiniLM `full` model against fp32; per-channel scales
1.3-1.5 %, at the same speed. Leaving any one layer, or any one kind of matmul, in fp32 still flipped 1.2-1.7 %, and
block-wise int8 weights (MatMulNBits) were slower than fp32 here: hence the guard below, which keeps the speed and
the labels."""
CALIBRATION_ROWS = 512
"""Validation rows the parity check and the int8 guard are measured on (besides the folder's examples)."""
GUARD_QUANTILE = 0.99
"""The int8 guard's margin is this quantile of int8's answer errors (`runtimes.answer_errors`) on the calibration
rows: about 1 % of answers may move further, and of those only the ones that close to another answer change. On
the SST-2 `full` model (margin 0.94 from 512 validation rows) 6.4 % of the test sentences were rechecked, and 3 of
their 1,821 labels differed from fp32 (plain int8: 27)."""


class _Recorder:
    """Stands in for the model while the task predicts: keeps every batch of tensors it is called with, and the
    logits PyTorch returned for it."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []

    def __call__(self, **inputs: Any) -> Any:
        output = self.model(**inputs)
        tensors = {name: value for name, value in inputs.items() if isinstance(value, torch.Tensor)}
        self.calls.append((tensors, output.logits.detach().float()))
        return output

    def __getattr__(self, name: str) -> Any:  # config, and whatever else the task reads of its model
        return getattr(self.model, name)


class _LogitsOf(torch.nn.Module):
    """The model as a graph of positional tensors (in the order the task passed them) to one output, the logits."""

    def __init__(self, model: Any, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True))).logits


def sample_inputs(run: LoadedRun, inputs_file: Path | None = None) -> list[str]:
    """Real inputs to trace and check with: a file the user names (read by the task), else run.json's evaluation
    examples (their texts, or their image files inside the folder)."""
    if inputs_file is not None:
        values = run.task.read_inputs(Path(inputs_file), run.recipe)
    else:
        folder = RunFolder(run.folder)
        values = []
        for example in folder.examples():
            key = next((k for k in EXAMPLE_FILE_KEYS if k in example), "text")
            value = example.get(key)
            if key != "text" and isinstance(value, str):
                value = str(folder.file(value))
            if isinstance(value, str) and value.strip():
                values.append(value)
    values = list(dict.fromkeys(values))[:64]
    if not values:
        where = inputs_file or f"{run.folder}/run.json (its `examples`)"
        raise ExportError(f"no {run.task.input_noun} to trace the model with in {where}; pass --inputs FILE")
    return values


def _is_file(value: str) -> bool:
    """Whether an input names a file (an image's); a text longer than a file name can be is not one."""
    try:
        return Path(value).is_file()
    except OSError:  # ENAMETOOLONG, which pathlib does not treat as "no such file"
        return False


def record_calls(run: LoadedRun, values: list[str]) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """The task's predict over `values` batched (padding) and one by one, plus an over-long text (truncation),
    with PyTorch's logits for each batch. The first call, the largest batch, is the one traced."""
    batch = values if len(values) > 1 else values * 2  # a dynamic batch axis needs an example batch of 2 or more
    texts = [v for v in values if not _is_file(v)]
    if texts:
        # Longer than any model's max_length once tokenized: the truncated path is checked too.
        batch = batch + [" ".join(texts * (1 + 2000 // max(1, sum(len(t.split()) for t in texts))))]
    recorder = _Recorder(run.model)
    traced = replace(run, model=recorder)
    with torch.inference_mode():
        run.task.predict(traced, batch)
        for value in values[:SINGLE_ROWS]:
            run.task.predict(traced, [value])
    if not recorder.calls:
        raise ExportError(f"{run.folder}: the task's predict never called the model, so there is nothing to export")
    return sorted(recorder.calls, key=lambda call: -len(call[1]))


def validation_calls(run: LoadedRun, names: list[str], limit: int = CALIBRATION_ROWS) -> tuple[list, dict[str, Any]]:
    """Up to `limit` rows of the recipe's validation split, encoded and batched as `evaluate` feeds them, with
    PyTorch's logits; with a record of what was used. When the data does not load here (offline, moved, or a
    `module:function` loader, which an output folder may not make us import), no rows, and the reason."""
    recipe = run.recipe.model_copy(deep=True)
    if run.task.problem_type != "regression":
        recipe.data.label_names = [run.id2label[i] for i in sorted(run.id2label)]
    try:
        if recipe.data.source and resolve_dataset_source(recipe.data.source).record.get("kind") == "function":
            return [], {"source": "examples", "reason": "data.source is Python code named by the folder; not imported"}
        split = run.task.prepare_data(recipe).splits["validation"]
        split = split.select(range(min(limit, len(split))))
        encoded = run.task.encode(DatasetDict({"calibration": split}), run.preprocessor, recipe)
    except Exception as error:  # any loader's failure: calibrate on the examples alone, and say why
        reason = one_line(error)
        logger.warning("the validation split did not load (%s); parity is measured on the examples alone", reason)
        return [], {"source": "examples", "reason": reason}
    calls = []
    loader = DataLoader(encoded.splits["calibration"], batch_size=32, collate_fn=encoded.collator)
    with torch.inference_mode():
        for batch in loader:
            missing = sorted(set(names) - set(batch))
            if missing:
                return [], {"source": "examples", "reason": f"the encoded split lacks {missing}"}
            tensors = {name: batch[name] for name in names}
            calls.append((tensors, run.model(**tensors).logits.detach().float()))
    return calls, {"source": "validation", "rows": len(split)}


def _dynamic_shapes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[dict[int, Any], ...]]:
    """Batch (axis 0) dynamic everywhere; axis 1 too for token sequences (2-D inputs). Images keep their fixed size.
    Keyed by `_LogitsOf.forward`'s one parameter, `*tensors`."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    return {"tensors": tuple({0: batch, 1: sequence} if t.dim() == 2 else {0: batch} for t in tensors.values())}


def _reason(error: Exception) -> str:
    """One line of an exporter's error: its exception summary when it has one (torch.onnx prints steps first)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1 :]
    return (lines or [type(error).__name__])[0][:300]


def _export_graph(run: LoadedRun, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """torch.onnx's dynamo exporter (it needs onnxscript): transformers 5 builds attention masks from Python-side
    sizes, which the legacy TorchScript tracer (`dynamo=False`) freezes into constants — its graph of the MiniLM
    SST-2 model was off by 0.69 in logits at another batch shape; torch.export keeps them symbolic (within 1e-6)."""
    names = list(tensors)
    module = _LogitsOf(run.model, names).eval()
    captured = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                tuple(tensors.values()),
                input_names=names,
                output_names=["logits"],
                dynamic_shapes=_dynamic_shapes(tensors),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                optimize=True,
                verbose=False,
            )
            program.save(str(path), external_data=False)
    except ImportError as error:
        raise ExportError(f"exporting needs onnx and onnxscript ({error.name} is missing): {INSTALL_HINT}") from None
    except Exception as error:  # the exporter raises many kinds; the user gets one line saying why
        raise ExportError(
            f"{run.folder}: {type(run.model).__name__} cannot be exported to ONNX ({_reason(error)}); "
            "predict with --runtime torch"
        ) from None


def _fuse(path: Path, calls: list[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> dict[str, Any]:
    """ONNX Runtime's fused operators (`onnx_fusions.py`) in a token model's graph, kept when the fused graph gives
    PyTorch's logits on the recorded batches within `FP32_TOLERANCE`. An image model is left as exported."""
    if "input_ids" not in calls[0][0]:
        return {}

    def keeps(candidate: Path) -> bool:
        parity = measure_parity(OnnxSession(candidate), calls)
        return parity.get("max_abs_diff", float("inf")) <= FP32_TOLERANCE

    return fuse(path, keeps)


def _quantize(source: Path, target: Path) -> None:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ExportError(f"int8 quantisation needs onnxruntime: {INSTALL_HINT}") from None
    with quiet_root_logger():  # ONNX Runtime logs a "consider pre-processing" warning on the root logger
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=QUANTIZATION["per_channel"],
            op_types_to_quantize=QUANTIZATION["op_types"],
        )


def _onnx_logits(session: OnnxSession, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.from_numpy(session.logits({name: value.numpy() for name, value in tensors.items()}))


def measure_parity(session: OnnxSession, calls: list[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> dict[str, Any]:
    """How far the ONNX logits are from PyTorch's on every recorded batch, and how often the top class agrees; for
    per-token logits, over the real tokens (a padding position answers nothing)."""
    worst, agree, rows = 0.0, 0, 0
    for tensors, expected in calls:
        got = _onnx_logits(session, tensors)
        if got.shape != expected.shape:
            return {"passed": False, "reason": f"logits shape {tuple(got.shape)} != PyTorch's {tuple(expected.shape)}"}
        mask = tensors.get("attention_mask")
        if got.dim() == 3 and mask is not None and mask.shape == got.shape[:2]:
            got, expected = got[mask.bool()], expected[mask.bool()]
        worst = max(worst, float((got - expected).abs().max()))
        if expected.shape[-1] > 1:
            same = got.argmax(-1) == expected.argmax(-1)
        else:  # one output (regression): agreeing means within 1 % of the value's scale
            same = ((got - expected).abs() <= 0.01 * (1 + expected.abs())).squeeze(-1)
        agree, rows = agree + int(same.sum()), rows + same.numel()
    return {
        "max_abs_diff": worst,
        "top_class_agreement": agree / rows,
        "batches": len(calls),
        "batch_sizes": sorted({len(expected) for _, expected in calls}),
        "rows": int(sum(len(expected) for _, expected in calls)),
    }


def guard_margin(session: OnnxSession, calls: list[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> float | None:
    """The int8 guard's margin: `GUARD_QUANTILE` of int8's answer errors against PyTorch over the calibration rows.
    None when rows have no one answer to guard (`runtimes.answer_margins`): regression, and token classification,
    where a recheck is a whole sentence of answers (at the calibrated margin it sent 65 % of CoNLL-2003 validation
    sentences to fp32, slower than fp32 alone, mostly for special tokens and later sub-words, whose tags no one
    reads; int8 alone kept the top tag of 99.2 % of all real tokens)."""
    errors = []
    for tensors, expected in calls:
        got = _onnx_logits(session, tensors).numpy()
        if answer_margins(got, session.multi_label) is None:
            return None
        errors.append(answer_errors(got, expected.numpy(), session.multi_label))
    return float(np.quantile(np.concatenate(errors), GUARD_QUANTILE))


def _variant(folder: Path, runtime: str, calls: list, multi_label: bool, quantization: dict | None) -> dict[str, Any]:
    path = folder / ONNX_DIR / VARIANT_FILES[runtime]
    model = OnnxSession(path, multi_label)
    record: dict[str, Any] = {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size}
    record["quantization"] = quantization
    if quantization is not None:
        margin = guard_margin(model, calls)
        if margin is not None:
            record["parity_unguarded"] = measure_parity(model, calls)
            model.guard_with(OnnxSession(folder / ONNX_DIR / VARIANT_FILES["onnx"], multi_label), margin)
    parity = measure_parity(model, calls)
    if "passed" not in parity:
        if quantization is None:
            parity.update(passed=parity["max_abs_diff"] <= FP32_TOLERANCE, tolerance=FP32_TOLERANCE)
        else:
            parity.update(passed=parity["top_class_agreement"] >= INT8_AGREEMENT, min_agreement=INT8_AGREEMENT)
    record["parity"] = parity
    if model.fallback is not None:
        rechecked = round(model.rechecked / max(parity["rows"], 1), 4)
        record["guard"] = {"fallback": "onnx", "margin": model.margin, "quantile": GUARD_QUANTILE}
        record["guard"]["rechecked_share"] = rechecked
    return record


def _io_records(model: OnnxSession) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def record(node: Any) -> dict[str, Any]:
        return {"name": node.name, "type": node.type, "shape": [d if d is not None else "?" for d in node.shape]}

    return [record(n) for n in model.session.get_inputs()], [record(n) for n in model.session.get_outputs()]


def export(output_dir: str | Path, int8: bool = False, inputs_file: str | Path | None = None) -> dict[str, Any]:
    """Write `onnx/model.onnx` (and `onnx/model.int8.onnx` with `int8`) and `onnx/manifest.json`; returns the manifest.

    The manifest goes last, and an earlier one is removed first: an export cut short leaves no manifest, so the
    folder serves with PyTorch as before. A LoRA folder exports the merged model saved at its top.
    """
    folder = Path(output_dir)
    run = load_run(folder, runtime="torch")
    values = sample_inputs(run, Path(inputs_file) if inputs_file else None)
    calls = record_calls(run, values)
    more, calibration = validation_calls(run, list(calls[0][0]))
    target = folder / ONNX_DIR
    target.mkdir(exist_ok=True)
    (target / MANIFEST).unlink(missing_ok=True)
    _export_graph(run, calls[0][0], target / VARIANT_FILES["onnx"])
    fusions = _fuse(target / VARIANT_FILES["onnx"], calls)
    checks = calls + more
    multi_label = run.task.problem_type == "multi_label_classification"
    variants = {"onnx": _variant(folder, "onnx", checks, multi_label, None)}
    if int8:
        _quantize(target / VARIANT_FILES["onnx"], target / VARIANT_FILES["onnx-int8"])
        variants["onnx-int8"] = _variant(folder, "onnx-int8", checks, multi_label, QUANTIZATION)
    else:
        (target / VARIANT_FILES["onnx-int8"]).unlink(missing_ok=True)  # from an earlier export: it no longer matches
    inputs, outputs = _io_records(OnnxSession(target / VARIANT_FILES["onnx"]))
    manifest = {
        "format": 1,
        "task": run.recipe.task,
        "architecture": type(run.model).__name__,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "opset": OPSET,
        "fusions": fusions,
        "onnxruntime": version("onnxruntime"),
        "inputs": inputs,
        "outputs": outputs,
        "lora_merged": RunFolder(folder).adapter,
        "parity_inputs": len(values),
        "calibration": calibration,
        "weights": weight_checksums(RunFolder(folder)),
        "variants": variants,
    }
    if run.recipe.task in TEXT_ANSWERS:  # what the torch-free text path (`onnx_text.py`) may serve
        names = [record["name"] for record in inputs]
        manifest["tokenizer"] = tokenizer_record(folder, run.preprocessor, run.recipe.data.max_length, values, names)
    write_json_atomic(target / MANIFEST, manifest)
    return manifest


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What `hf-transfer export` prints: each variant's file, size and parity."""
    shown = {}
    for runtime, variant in manifest["variants"].items():
        parity = variant["parity"]
        shown[runtime] = {
            "file": f"{ONNX_DIR}/{variant['file']}",
            "mb": round(variant["bytes"] / 1e6, 1),
            "max_abs_diff": parity.get("max_abs_diff"),
            "top_class_agreement": parity.get("top_class_agreement"),
            "passed": parity["passed"],
        }
        if "guard" in variant:
            shown[runtime]["guard_margin"] = round(variant["guard"]["margin"], 4)
            shown[runtime]["guard_rechecked_share"] = variant["guard"]["rechecked_share"]
    return shown
