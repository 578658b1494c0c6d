"""Gradio Space that serves one classification model through a transformers pipeline (rendered by hf_transfer)."""

import json
import os
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedConfig,
    pipeline,
)
from transformers.utils import cached_file, find_adapter_config_file

# Written in when the Space is rendered; the MODEL_ID Space variable (or environment variable) takes precedence.
DEFAULT_MODEL_ID = "{{REPO_ID}}"
# Remote code runs only for the repo this app was generated for, never for whatever MODEL_ID names.
TRUSTED_REPO = "{{TRUSTED_REPO}}"
MODEL_ID = os.environ.get("MODEL_ID") or DEFAULT_MODEL_ID
# Inputs are truncated to the model's length anyway; this only stops pathological pastes.
MAX_CHARS = 10_000
TOP_K = 5
HERE = Path(__file__).resolve().parent
# System fonts only, so the page makes no request to a font CDN (the local demo runs offline).
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def has_file(model_id: str, filename: str) -> bool:
    """Whether a local folder or Hub repo holds `filename`."""
    found = cached_file(
        model_id,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    return found is not None


def load_classifier(model_id: str) -> tuple[Any, dict]:
    """Build the pipeline for `model_id` (a full model or a PEFT adapter) and return it with its raw config."""
    config = PreTrainedConfig.get_config_dict(model_id)[0]
    is_image = any(name.endswith("ForImageClassification") for name in config.get("architectures") or [])
    task = "image-classification" if is_image else "text-classification"
    if find_adapter_config_file(model_id) is None:
        trust = model_id == TRUSTED_REPO and "auto_map" in config
        # safetensors only: a pickled checkpoint could run code on load.
        return pipeline(task, model=model_id, trust_remote_code=trust, model_kwargs={"use_safetensors": True}), config

    from peft import PeftConfig, PeftModel

    # An adapter repo ships the fine-tuned label config; the base model supplies everything else.
    base_id = PeftConfig.from_pretrained(model_id).base_model_name_or_path
    # Parsed, not raw: a timm model's config keeps its labels as `label_names`, which AutoConfig turns into id2label.
    parsed = AutoConfig.from_pretrained(model_id)
    labels = {"id2label": parsed.id2label, "label2id": parsed.label2id, "problem_type": parsed.problem_type}
    auto_model = AutoModelForImageClassification if is_image else AutoModelForSequenceClassification
    # The base checkpoint's own head (ImageNet's 1,000 classes, say) gives way to one sized to these labels.
    base = auto_model.from_pretrained(base_id, use_safetensors=True, ignore_mismatched_sizes=True, **labels)
    model = PeftModel.from_pretrained(base, model_id).merge_and_unload()
    if is_image:
        source = model_id if has_file(model_id, "preprocessor_config.json") else base_id
        return pipeline(task, model=model, image_processor=AutoImageProcessor.from_pretrained(source)), config
    source = model_id if has_file(model_id, "tokenizer_config.json") else base_id
    return pipeline(task, model=model, tokenizer=AutoTokenizer.from_pretrained(source)), config


CLASSIFIER, CONFIG = load_classifier(MODEL_ID)
IS_IMAGE = CLASSIFIER.task == "image-classification"
PROBLEM_TYPE = CONFIG.get("problem_type") or "single_label_classification"
FUNCTION_TO_APPLY = {"multi_label_classification": "sigmoid", "regression": "none"}.get(PROBLEM_TYPE, "softmax")


def read_text(text: str | None) -> str:
    """Return the stripped text, or raise a message the user can act on."""
    text = (text or "").strip()
    if not text:
        raise gr.Error("Please enter some text to classify.")
    if len(text) > MAX_CHARS:
        raise gr.Error(f"The text has {len(text):,} characters; the limit is {MAX_CHARS:,}. Please shorten it.")
    return text


def read_image(upload: dict | str | None) -> Image.Image:
    """Open an uploaded file as an RGB image, or raise a message the user can act on."""
    if not upload:
        raise gr.Error("Please upload an image.")
    path = upload["path"] if isinstance(upload, dict) else upload
    name = upload.get("orig_name") if isinstance(upload, dict) else None
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise gr.Error(f"{name or Path(path).name} is not an image file that can be read.") from err


def predict(value: Any) -> dict[str, float] | float:
    """Classify one text or image: label -> score for classification, the number for regression."""
    inputs = read_image(value) if IS_IMAGE else read_text(value)
    options = {} if IS_IMAGE else {"truncation": True}
    outputs = CLASSIFIER(inputs, top_k=None, function_to_apply=FUNCTION_TO_APPLY, **options)
    if PROBLEM_TYPE == "regression":
        return round(float(outputs[0]["score"]), 4)
    return {output["label"]: float(output["score"]) for output in outputs}


def load_examples() -> list[list[str]]:
    """Real evaluation examples shipped beside the app (texts, or image files in this folder)."""
    path = HERE / "examples.json"
    if not path.is_file():
        return []
    examples = json.loads(path.read_text(encoding="utf-8"))
    if IS_IMAGE:
        return [[str(HERE / example)] for example in examples]
    return [[example] for example in examples if len(example) <= MAX_CHARS]


with gr.Blocks(title=MODEL_ID) as demo:
    gr.Markdown(f"## {MODEL_ID}\nFine-tuned with hf_transfer. Enter an input and press **Predict**.")
    with gr.Row():
        with gr.Column():
            if IS_IMAGE:
                # predict opens the upload itself (preprocess=False below): Gradio's own decoding turns a
                # non-image file into an opaque error, so no `type=` conversion happens here.
                model_input = gr.Image(label="Image", sources=["upload", "clipboard"])
            else:
                model_input = gr.Textbox(label="Text", lines=4, placeholder="Type or paste a sentence")
            button = gr.Button("Predict", variant="primary")
        with gr.Column():
            if PROBLEM_TYPE == "regression":
                output = gr.Number(label="Predicted value", elem_id="prediction")
            else:
                output = gr.Label(num_top_classes=TOP_K, label="Prediction", elem_id="prediction")
    examples = load_examples()
    if examples:
        gr.Examples(examples=examples, inputs=[model_input], label="Examples from the evaluation set")
    triggers = [button.click] if IS_IMAGE else [button.click, model_input.submit]
    gr.on(triggers, predict, inputs=model_input, outputs=output, api_name="predict", preprocess=not IS_IMAGE)

# One CPU inference at a time (Gradio's default concurrency); a bounded queue keeps waits predictable.
demo.queue(max_size=32)


def launch(**kwargs: Any) -> Any:
    """Start the server; keyword arguments go to `demo.launch` (Gradio 6 takes the theme here)."""
    return demo.launch(theme=THEME, **kwargs)


if __name__ == "__main__":
    launch()
