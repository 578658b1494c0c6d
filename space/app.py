"""Gradio Space that serves one model through a transformers pipeline (rendered by hf_transfer).

What differs by task lives beside this file, in the module named after the pipeline tag (`io_text_classification.py`,
`io_image_classification.py`, ...). Each exposes the same few names:

- `input_component()`, `output_component(config)`: the Gradio components (`config` is the model's raw config.json);
- `predict(classifier, config, value)`: read one input, run the pipeline, format its answer for the output;
- `examples(folder, shipped)`: the example inputs listed in examples.json, as gr.Examples rows;
- `PREPROCESS`: whether Gradio decodes the input before `predict` sees it;
- `MODEL_CLASS`, `load_processor(source)`: how a PEFT adapter's base model and preprocessor load.
"""

import ast
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import gradio as gr
from transformers import AutoConfig, PreTrainedConfig, pipeline
from transformers.utils import cached_file, find_adapter_config_file

# Written in when the Space is rendered; the MODEL_ID Space variable (or environment variable) takes precedence.
DEFAULT_MODEL_ID = "{{REPO_ID}}"
# Model code runs only for the repo this app was rendered for, never for whatever MODEL_ID names; and when a digest is
# given, only while the repo's modeling_hf_transfer.py holds exactly the bytes hf_transfer vouched for at rendering.
TRUSTED_REPO = "{{TRUSTED_REPO}}"
TRUSTED_CODE_SHA256 = "{{TRUSTED_CODE_SHA256}}"
MODEL_ID = os.environ.get("MODEL_ID") or DEFAULT_MODEL_ID
HERE = Path(__file__).resolve().parent
OWN_CODE = "modeling_hf_transfer"
# Files whose `auto_map` makes transformers import code from the repo (or from another repo).
CODE_CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
# An adapter repo that ships one of these has its own preprocessor; otherwise the base model's is used.
PREPROCESSOR_FILES = ("tokenizer_config.json", "preprocessor_config.json")
# How a config's architecture names its pipeline task (and so its I/O module).
TASK_OF_ARCHITECTURE = {
    "ForSequenceClassification": "text-classification",
    "ForImageClassification": "image-classification",
    "ForTokenClassification": "token-classification",
}
# System fonts only, so the page makes no request to a font CDN (the local demo runs offline).
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def model_name(model_id: str) -> str:
    """What the page calls the model: a local folder's name (never its absolute path), else the repo ID."""
    return Path(model_id).name if Path(model_id).is_dir() else model_id


MODEL_NAME = model_name(MODEL_ID)


def find_file(model_id: str, filename: str) -> str | None:
    """The local path of `filename` in a local folder or Hub repo (downloaded into the cache), or None."""
    return cached_file(
        model_id,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def refuse(reason: str) -> NoReturn:
    """Stop the app with one message naming the model and what to do, instead of serving a different model."""
    raise SystemExit(
        f"error: {MODEL_NAME} needs model code of its own (auto_map in its config), and {reason}. Loaded without "
        "that code, transformers would quietly build a different architecture and serve wrong labels, so this app "
        f"stops. To serve it, run `hf-transfer demo {MODEL_ID}` on an hf_transfer output folder (it checks the "
        "code is hf_transfer's own), or render this Space for the model with `hf-transfer publish` (adding "
        "--trust-remote-code only if you trust its code)."
    )


def code_references(model_id: str, config: dict) -> list[tuple[str, str]]:
    """(config file, class reference) for every `auto_map` entry of the model's configs."""
    found = []
    for name in CODE_CONFIGS:
        if name == "config.json":
            data = config
        else:
            path = find_file(model_id, name)
            data = json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
        auto_map = data.get("auto_map") or {}
        for value in auto_map.values() if isinstance(auto_map, dict) else [auto_map]:
            found += [(name, str(ref)) for ref in (value if isinstance(value, list) else [value]) if ref]
    return found


def is_vouched_code(model_id: str, references: list[tuple[str, str]]) -> bool:
    """Whether the code is the modeling file vouched for at rendering (same sha256) and the configs name only
    classes defined in it, from config.json."""
    path = find_file(model_id, f"{OWN_CODE}.py")
    if path is None:
        return False
    source = Path(path).read_bytes()
    if hashlib.sha256(source).hexdigest() != TRUSTED_CODE_SHA256:
        return False
    classes = {f"{OWN_CODE}.{node.name}" for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}
    return all(name == "config.json" and ref in classes for name, ref in references)


def may_run_code(model_id: str, config: dict, adapter: bool) -> bool:
    """Whether loading passes trust_remote_code=True; refuses a model whose code this app may not run."""
    references = code_references(model_id, config)
    if not references:
        return False
    if model_id != TRUSTED_REPO:
        refuse("this app was not rendered to run the code of this model")
    if TRUSTED_CODE_SHA256 and not is_vouched_code(model_id, references):
        refuse("its code is no longer the hf_transfer modeling file this Space was rendered for")
    if adapter:
        refuse("an adapter on such a model is not served; publish the merged model (hf-transfer publish --merge)")
    return True


def task_of(config: dict) -> str:
    """The pipeline task of the model, from its architecture (text classification when it names none)."""
    for architecture in config.get("architectures") or []:
        for suffix, task in TASK_OF_ARCHITECTURE.items():
            if architecture.endswith(suffix):
                return task
    return "text-classification"


def load_task_io(task: str) -> ModuleType:
    """The task's I/O module shipped beside this file."""
    path = HERE / f"io_{task.replace('-', '_')}.py"
    if not path.is_file():
        raise SystemExit(
            f"error: {MODEL_NAME} is a {task} model and this app ships no {path.name}: render the Space for this "
            "model again with `hf-transfer publish`."
        )
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_classifier(model_id: str, config: dict, task_io: ModuleType) -> Any:
    """Build the pipeline for `model_id` (a full model or a PEFT adapter)."""
    task = task_of(config)
    adapter = find_adapter_config_file(model_id) is not None
    trust = may_run_code(model_id, config, adapter)
    if not adapter:
        # safetensors only: a pickled checkpoint could run code on load.
        return pipeline(task, model=model_id, trust_remote_code=trust, model_kwargs={"use_safetensors": True})

    from peft import PeftConfig, PeftModel

    # An adapter repo ships the fine-tuned label config; the base model supplies everything else.
    base_id = PeftConfig.from_pretrained(model_id).base_model_name_or_path
    # Parsed, not raw: a timm model's config keeps its labels as `label_names`, which AutoConfig turns into id2label.
    parsed = AutoConfig.from_pretrained(model_id)
    labels = {"id2label": parsed.id2label, "label2id": parsed.label2id, "problem_type": parsed.problem_type}
    # The base checkpoint's own head (ImageNet's 1,000 classes, say) gives way to one sized to these labels.
    base = task_io.MODEL_CLASS.from_pretrained(base_id, use_safetensors=True, ignore_mismatched_sizes=True, **labels)
    model = PeftModel.from_pretrained(base, model_id).merge_and_unload()
    source = model_id if any(find_file(model_id, name) for name in PREPROCESSOR_FILES) else base_id
    return pipeline(task, model=model, **task_io.load_processor(source))


CONFIG = PreTrainedConfig.get_config_dict(MODEL_ID)[0]
TASK_IO = load_task_io(task_of(CONFIG))
CLASSIFIER = load_classifier(MODEL_ID, CONFIG, TASK_IO)


def predict(value: Any) -> Any:
    """Answer one input the way the task's output component shows it."""
    return TASK_IO.predict(CLASSIFIER, CONFIG, value)


def load_examples() -> list[list[str]]:
    """Real evaluation examples shipped beside the app (examples.json, and image files in this folder)."""
    path = HERE / "examples.json"
    if not path.is_file():
        return []
    return TASK_IO.examples(HERE, json.loads(path.read_text(encoding="utf-8")))


with gr.Blocks(title=MODEL_NAME) as demo:
    gr.Markdown(f"## {MODEL_NAME}\nFine-tuned with hf_transfer. Enter an input and press **Predict**.")
    with gr.Row():
        with gr.Column():
            model_input = TASK_IO.input_component()
            button = gr.Button("Predict", variant="primary")
        with gr.Column():
            output = TASK_IO.output_component(CONFIG)
    examples = load_examples()
    if examples:
        gr.Examples(examples=examples, inputs=[model_input], label="Examples from the evaluation set")
    triggers = [button.click] + ([model_input.submit] if hasattr(model_input, "submit") else [])
    gr.on(triggers, predict, inputs=model_input, outputs=output, api_name="predict", preprocess=TASK_IO.PREPROCESS)

# One CPU inference at a time (Gradio's default concurrency); a bounded queue keeps waits predictable.
demo.queue(max_size=32)


def launch(**kwargs: Any) -> Any:
    """Start the server; keyword arguments go to `demo.launch` (Gradio 6 takes the theme here)."""
    return demo.launch(theme=THEME, **kwargs)


if __name__ == "__main__":
    launch()
