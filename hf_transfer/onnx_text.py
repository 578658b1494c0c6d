"""`predict` for a text task from its ONNX export on tokenizers, ONNX Runtime and numpy alone: no torch, no
transformers. Importing those takes 6-12 s of a 2-CPU machine before the first answer; this path starts in well under
one, so a whole `predict --file` command is bounded by the model, not by its imports.

It serves only what the export vouched for. `hf-transfer export` sets the folder's `tokenizer.json` up as transformers
sets its tokenizer up for `predict` (truncation at the recipe's `data.max_length`, the pad token, the sides), checks
that it gives the very arrays transformers gives on the parity texts and on awkward ones (empty, accents, CJK, emoji,
an over-long word and sentence), and records the answer with the tokenizer files' sha256 (`tokenizer_record`). Any
other folder — no such record, a tokenizer file changed since, a task that is not a text task, `--runtime torch` — is
served by `inference.load_run`, exactly as before. Answers come from `answers.py`, as the torch path's do."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .answers import TEXT_ANSWERS, text_answers, text_line
from .errors import one_line
from .fileio import file_sha256, read_json
from .recipe import Recipe, load_recipe
from .run_folder import RunFolder
from .runtimes import MANIFEST, ONNX_DIR, OnnxSession, choose_runtime, load_onnx_session
from .sources import check_saved_weights
from .trust import allow_model_code

logger = logging.getLogger(__name__)

ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
"""The graph inputs this path can feed, and the `tokenizers.Encoding` field each comes from."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
AWKWARD_TEXTS = (
    "",
    "   ",
    "Café naïve ÀÉÎÕÜ façade — “quoted” … ½",
    "日本語のテキストと中文字符",
    "emoji 😀🎉 and symbols ©®™ ∑∞",
    "tab\tinside and\u00a0no-break space",
    "[CLS] [SEP] [PAD] [UNK] [MASK] <s> </s> <pad>",
    "supercalifragilistic" * 300,
    " ".join(["a brilliant and moving story, but the plot was messy"] * 60),
)
"""Checked at export beside the parity texts: where a tokenizer set up by hand is likeliest to differ."""
BATCH_SIZE = 32
"""As the text tasks' torch `predict` batches (and `streaming.py` sorts each chunk by length before)."""


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def fast_tokenizer(folder: Path, max_length: int) -> Any:
    """The folder's tokenizer.json with truncation and padding as transformers sets them for `predict`."""
    from tokenizers import Tokenizer

    config = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length, strategy="longest_first", direction=config.get("truncation_side", "right"))
    pad = _token(config.get("pad_token"))
    pad_id = tokenizer.token_to_id(pad) if pad else None
    if pad_id is None:
        raise ValueError(f"tokenizer_config.json's pad_token {pad!r} is not in tokenizer.json's vocabulary")
    tokenizer.enable_padding(
        direction=config.get("padding_side", "right"),
        pad_id=pad_id,
        pad_token=pad,
        pad_type_id=int(config.get("pad_token_type_id", 0)),
    )
    return tokenizer


def encode(tokenizer: Any, texts: list[str], names: list[str]) -> dict[str, np.ndarray]:
    """The graph's inputs `names` for a batch of texts, padded to the batch's longest."""
    encodings = tokenizer.encode_batch(texts)
    return {name: np.array([getattr(e, ENCODING_FIELDS[name]) for e in encodings], dtype=np.int64) for name in names}


def tokenizer_record(folder: Path, preprocessor: Any, max_length: int, texts: list[str], names: list[str]) -> dict:
    """Whether `fast_tokenizer` gives what transformers' tokenizer gives for `predict` — batched (padding) and one by
    one — on `texts` and `AWKWARD_TEXTS`, with the sha256 of the tokenizer files it was checked with."""
    files = {name: file_sha256(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}
    checked = list(dict.fromkeys([*texts, *AWKWARD_TEXTS]))
    record: dict[str, Any] = {"files": files, "texts": len(checked), "matches_transformers": False}
    unknown = sorted(set(names) - set(ENCODING_FIELDS))
    if "tokenizer.json" not in files or unknown:
        record["reason"] = f"the graph takes {unknown}" if unknown else "the folder has no tokenizer.json"
        return record
    try:
        tokenizer = fast_tokenizer(folder, max_length)
    except Exception as error:  # any tokenizer.json tokenizers cannot read: serve with transformers, and say why
        record["reason"] = one_line(error)
        return record
    for batch in [checked, *([text] for text in checked)]:
        expected = preprocessor(batch, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        got = encode(tokenizer, batch, names)
        for name in names:
            if name not in expected or not np.array_equal(np.asarray(expected[name]), got[name]):
                record["reason"] = f"{name} differs from transformers' on {batch[0][:60]!r}"
                return record
    record["matches_transformers"] = True
    return record


@dataclass
class OnnxTextRun:
    """An output folder served from its ONNX export without torch: what `streaming.py` needs of a loaded run."""

    folder: Path
    recipe: Recipe
    session: OnnxSession
    tokenizer: Any
    id2label: dict[int, str]
    threshold: float
    """The multi-label threshold config.json records (`hf_transfer_threshold`)."""
    runtime: str
    input_noun: str = "texts"

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """One answer per text, as the task's torch `predict` answers (`answers.text_answers`). The int8 guard's
        rechecks are gathered over all the batches and answered in full fp32 batches (one by one, a recheck here
        and there cost a sixth of the whole on SST-2 test)."""
        if not texts:
            return []
        names = list(self.session.input_types)
        logits = np.concatenate(
            [
                self.session.logits(encode(self.tokenizer, texts[start : start + BATCH_SIZE], names), guard=False)
                for start in range(0, len(texts), BATCH_SIZE)
            ]
        )
        again = self.session.rows_to_recheck(logits)
        if again is not None and again.any():
            rows = np.flatnonzero(again)
            for start in range(0, len(rows), BATCH_SIZE):
                batch = rows[start : start + BATCH_SIZE]
                feed = encode(self.tokenizer, [texts[i] for i in batch], names)
                logits[batch] = self.session.fallback.logits(feed)
            self.session.rechecked += len(rows)
        return text_answers(self.recipe.task, logits, self.id2label, self.threshold)

    def read_inputs(self, path: Path) -> list[str]:
        from .tasks.text_classification import read_texts  # a table needs datasets: only then is it imported

        return read_texts(path, self.recipe)

    def format_result(self, text: str, result: dict[str, Any]) -> str:
        return text_line(text, result)


def load_onnx_text_run(
    folder: str | Path, runtime: str | None = None, trust_remote_code: bool = False
) -> OnnxTextRun | None:
    """The folder served torch-free, or None when this path does not apply (see the module's docstring).

    Refuses what `inference.load_run` refuses, with the same errors: pickle-only weights, model code that is not
    hf_transfer's own without `trust_remote_code`, a stale export, an unknown runtime.
    """
    folder = Path(folder)
    if runtime == "torch" or not (folder / "config.json").is_file() or not (folder / "recipe.yaml").is_file():
        return None
    run_folder = RunFolder(folder)
    manifest = run_folder.json(f"{ONNX_DIR}/{MANIFEST}")
    record = manifest.get("tokenizer") or {}
    files = record.get("files") or {}
    if not record.get("matches_transformers") or manifest.get("task") not in TEXT_ANSWERS or not files:
        return None
    for name, digest in files.items():
        path = run_folder.file(name) if name in TOKENIZER_FILES else None
        if path is None or file_sha256(path) != digest:
            logger.info("%s: %s changed since the export; predicting with transformers", folder, name)
            return None
    recipe = load_recipe(folder / "recipe.yaml")
    if recipe.task != manifest["task"]:
        return None
    check_saved_weights(folder)
    allow_model_code(run_folder, trust_remote_code)
    chosen = choose_runtime(run_folder, runtime)
    if chosen == "torch":
        return None
    config = run_folder.config
    return OnnxTextRun(
        folder=folder,
        recipe=recipe,
        session=load_onnx_session(run_folder, chosen, recipe.task == "multi-label-classification"),
        tokenizer=fast_tokenizer(folder, recipe.data.max_length),
        id2label={int(k): v for k, v in (config.get("id2label") or {}).items()},
        threshold=float(config.get("hf_transfer_threshold", 0.5)),
        runtime=chosen,
    )
