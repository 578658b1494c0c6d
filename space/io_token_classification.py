"""Space I/O for token classification (named entities): a textbox in; the text with its entities highlighted out."""

from pathlib import Path
from typing import Any

import gradio as gr
from transformers import AutoModelForTokenClassification, AutoTokenizer

EMOJI = "🏷️"  # of the Space, in its README front matter
MODEL_CLASS = AutoModelForTokenClassification
PREPROCESS = True
# Inputs are truncated to the model's length anyway; this only stops pathological pastes.
MAX_CHARS = 10_000
# The pipeline's grouping of sub-word predictions into entities, word by word (each word takes its first sub-word's
# tag, as the model was trained and scored); `hf-transfer predict` uses the same.
AGGREGATION = "first"


def load_processor(source: str) -> dict[str, Any]:
    """The pipeline's preprocessor argument, loaded from `source`."""
    return {"tokenizer": AutoTokenizer.from_pretrained(source)}


def input_component() -> gr.Component:
    return gr.Textbox(label="Text", lines=4, placeholder="Type or paste a sentence")


def output_component(config: dict) -> gr.Component:
    return gr.HighlightedText(label="Entities", combine_adjacent=False, show_legend=True, elem_id="prediction")


def read_text(text: str | None) -> str:
    """Return the stripped text, or raise a message the user can act on."""
    text = (text or "").strip()
    if not text:
        raise gr.Error("Please enter some text to tag.")
    if len(text) > MAX_CHARS:
        raise gr.Error(f"The text has {len(text):,} characters; the limit is {MAX_CHARS:,}. Please shorten it.")
    return text


def predict(classifier: Any, config: dict, value: str | None) -> dict[str, Any]:
    """The text and its entities (type, character offsets, score) as HighlightedText shows them."""
    text = read_text(value)
    found = classifier(text, aggregation_strategy=AGGREGATION)
    entities = [
        {"entity": e["entity_group"], "start": int(e["start"]), "end": int(e["end"]), "score": float(e["score"])}
        for e in found
    ]
    return {"text": text, "entities": entities}


def examples(folder: Path, shipped: list[str]) -> list[list[str]]:
    """The shipped example sentences, one per row."""
    return [[text] for text in shipped if isinstance(text, str) and len(text) <= MAX_CHARS]
