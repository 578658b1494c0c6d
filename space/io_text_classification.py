"""Space I/O for text models (single-label, multi-label, regression): a textbox in; scored labels or a number out."""

from pathlib import Path
from typing import Any

import gradio as gr
from transformers import AutoModelForSequenceClassification, AutoTokenizer

EMOJI = "📝"  # of the Space, in its README front matter
MODEL_CLASS = AutoModelForSequenceClassification
PREPROCESS = True
# Inputs are truncated to the model's length anyway; this only stops pathological pastes.
MAX_CHARS = 10_000
TOP_K = 5
# How the pipeline turns logits into the scores shown: independent sigmoids for multi-label, the raw value for
# regression, softmax otherwise.
SCORES = {"multi_label_classification": "sigmoid", "regression": "none"}


def problem_type(config: dict) -> str:
    return config.get("problem_type") or "single_label_classification"


def load_processor(source: str) -> dict[str, Any]:
    """The pipeline's preprocessor argument, loaded from `source`."""
    return {"tokenizer": AutoTokenizer.from_pretrained(source)}


def input_component() -> gr.Component:
    return gr.Textbox(label="Text", lines=4, placeholder="Type or paste a sentence")


def output_component(config: dict) -> gr.Component:
    if problem_type(config) == "regression":
        return gr.Number(label="Predicted value", elem_id="prediction")
    return gr.Label(num_top_classes=TOP_K, label="Prediction", elem_id="prediction")


def read_text(text: str | None) -> str:
    """Return the stripped text, or raise a message the user can act on."""
    text = (text or "").strip()
    if not text:
        raise gr.Error("Please enter some text to classify.")
    if len(text) > MAX_CHARS:
        raise gr.Error(f"The text has {len(text):,} characters; the limit is {MAX_CHARS:,}. Please shorten it.")
    return text


def predict(classifier: Any, config: dict, value: str | None) -> dict[str, float] | float:
    """label -> score for classification, the number for regression."""
    scores = SCORES.get(problem_type(config), "softmax")
    outputs = classifier(read_text(value), top_k=None, function_to_apply=scores, truncation=True)
    if problem_type(config) == "regression":
        return round(float(outputs[0]["score"]), 4)
    return {output["label"]: float(output["score"]) for output in outputs}


def examples(folder: Path, shipped: list[str]) -> list[list[str]]:
    """The shipped example texts, one per row."""
    return [[text] for text in shipped if isinstance(text, str) and len(text) <= MAX_CHARS]
