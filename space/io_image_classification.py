"""Space I/O for image classification: an uploaded image in; scored labels out."""

from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

EMOJI = "🖼️"  # of the Space, in its README front matter
MODEL_CLASS = AutoModelForImageClassification
# predict opens the upload itself: Gradio's own decoding turns a non-image file into an opaque error.
PREPROCESS = False
TOP_K = 5


def load_processor(source: str) -> dict[str, Any]:
    """The pipeline's preprocessor argument, loaded from `source`."""
    return {"image_processor": AutoImageProcessor.from_pretrained(source)}


def input_component() -> gr.Component:
    return gr.Image(label="Image", sources=["upload", "clipboard"])


def output_component(config: dict) -> gr.Component:
    return gr.Label(num_top_classes=TOP_K, label="Prediction", elem_id="prediction")


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


def predict(classifier: Any, config: dict, value: dict | str | None) -> dict[str, float]:
    """label -> score (softmax)."""
    outputs = classifier(read_image(value), top_k=None)
    return {output["label"]: float(output["score"]) for output in outputs}


def examples(folder: Path, shipped: list[str]) -> list[list[str]]:
    """The shipped example images (files beside the app), one per row."""
    paths = [(folder / name).resolve() for name in shipped if isinstance(name, str)]
    return [[str(path)] for path in paths if path.is_relative_to(folder) and path.is_file()]
