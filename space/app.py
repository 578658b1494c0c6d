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
import numpy as np
import torch
from transformers import AutoConfig, PreTrainedConfig, pipeline
from transformers.modeling_outputs import SequenceClassifierOutput
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
# What serves the model: the RUNTIME Space variable (or environment variable) `torch`, `onnx` or `onnx-int8`; unset,
# the fastest ONNX export in the model repo that verifies (see `onnx_file`), else transformers on the weights.
RUNTIME = os.environ.get("RUNTIME") or "auto"
ONNX_FASTEST_FIRST = ("onnx-int8", "onnx")
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


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_match(model_id: str, weights: dict) -> bool:
    """Whether the repo's weights are those the export was made from: every recorded file the repo holds has the
    recorded sha256 (an adapter repo holds the adapter's weights, not the merged ones), and at least one does."""
    matched = False
    for name, digest in weights.items():
        path = find_file(model_id, Path(name).name)
        if path is None:
            continue
        if sha256_of(path) != digest:
            return False
        matched = matched or name.endswith(".safetensors")
    return matched


def verified_variant(model_id: str, manifest: dict, runtime: str) -> str | None:
    """The local path of the manifest's `runtime` file when it is the file exported (sha256), else None."""
    variant = (manifest.get("variants") or {}).get(runtime) or {}
    name = str(variant.get("file") or "")
    if not name or Path(name).name != name:
        return None
    path = find_file(model_id, f"onnx/{name}")
    return path if path and sha256_of(path) == variant.get("sha256") else None


def onnx_file(model_id: str) -> tuple[str, dict | None] | None:
    """The ONNX model to serve and its guard (the fp32 file and margin below which an int8 answer is checked again,
    when the export recorded one), or None (then transformers serves the weights): onnxruntime is installed, the
    repo's `onnx/manifest.json` was made from exactly these weights, the files are the ones exported (sha256), and,
    unless RUNTIME names it, its parity check against PyTorch passed at export."""
    if RUNTIME == "torch":
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    path = find_file(model_id, "onnx/manifest.json")
    if path is None:
        return None
    manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    if not weights_match(model_id, manifest.get("weights") or {}):
        print(f"{MODEL_NAME}: the ONNX export was made from other weights; serving the weights with transformers")
        return None
    for runtime in [RUNTIME] if RUNTIME in ONNX_FASTEST_FIRST else ONNX_FASTEST_FIRST:
        variant = (manifest.get("variants") or {}).get(runtime) or {}
        if RUNTIME == "auto" and not variant.get("parity", {}).get("passed"):
            continue
        path = verified_variant(model_id, manifest, runtime)
        guard = variant.get("guard")
        if guard:
            fallback = verified_variant(model_id, manifest, str(guard.get("fallback")))
            guard = {"path": fallback, "margin": float(guard.get("margin", 0.0))} if fallback else None
            path = path if guard else None  # int8 without the fp32 answers it was checked with is not served
        if path:
            return path, guard
    return None


class OnnxModel(torch.nn.Module):
    """An ONNX Runtime session in the transformers model's place: the pipeline passes it the same tensors and reads
    `logits`, so the task's I/O module runs unchanged."""

    def __init__(self, path: str, config: PreTrainedConfig, guard: dict | None = None) -> None:
        import onnxruntime

        super().__init__()
        options = onnxruntime.SessionOptions()
        # A free Space has 2 shared CPUs: idle ONNX Runtime threads that spin take them from the busy ones.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.names = {node.name for node in self.session.get_inputs()}
        self.config = config
        self.fallback = OnnxModel(guard["path"], config) if guard else None
        self.margin = guard["margin"] if guard else 0.0
        self.multi_label = config.problem_type == "multi_label_classification"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def can_generate(self) -> bool:
        return False

    def forward(self, **inputs: Any) -> SequenceClassifierOutput:
        feed = {name: value.numpy() for name, value in inputs.items() if name in self.names}
        (logits,) = self.session.run(["logits"], feed)
        if self.fallback is not None and logits.ndim == 2 and logits.shape[-1] > 1:
            # The guard (hf_transfer's runtimes.py): an answer closer to another than int8's error at export is
            # answered again by the fp32 graph, so int8 keeps fp32's labels.
            if self.multi_label:
                margins = np.abs(logits).min(-1)
            else:
                top_two = np.partition(logits, -2, axis=-1)[..., -2:]
                margins = top_two[..., 1] - top_two[..., 0]
            again = margins < self.margin
            if again.any():
                (logits[again],) = self.fallback.session.run(["logits"], {k: v[again] for k, v in feed.items()})
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))


def load_classifier(model_id: str, config: dict, task_io: ModuleType) -> tuple[Any, str]:
    """Build the pipeline for `model_id` (a full model or a PEFT adapter); returns it and what runs the model."""
    task = task_of(config)
    adapter = find_adapter_config_file(model_id) is not None
    trust = may_run_code(model_id, config, adapter)
    served = onnx_file(model_id)
    # An adapter repo without its own preprocessor would need the base model's: transformers serves it then.
    if served and (not adapter or any(find_file(model_id, name) for name in PREPROCESSOR_FILES)):
        path, guard = served
        parsed = AutoConfig.from_pretrained(model_id)
        # Named after the architecture it was exported from: pipelines log an error for a class they do not know.
        architecture = (parsed.architectures or ["OnnxModel"])[0]
        model = type(architecture, (OnnxModel,), {})(path, parsed, guard)
        return pipeline(task, model=model, **task_io.load_processor(model_id)), f"ONNX Runtime ({Path(path).name})"
    if RUNTIME in ONNX_FASTEST_FIRST:
        print(f"{MODEL_NAME}: no verified {RUNTIME} export (or no onnxruntime); serving the weights with transformers")
    if not adapter:
        # safetensors only: a pickled checkpoint could run code on load.
        classifier = pipeline(task, model=model_id, trust_remote_code=trust, model_kwargs={"use_safetensors": True})
        return classifier, "transformers"

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
    return pipeline(task, model=model, **task_io.load_processor(source)), "transformers"


CONFIG = PreTrainedConfig.get_config_dict(MODEL_ID)[0]
TASK_IO = load_task_io(task_of(CONFIG))
CLASSIFIER, SERVED_BY = load_classifier(MODEL_ID, CONFIG, TASK_IO)


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
    gr.Markdown(
        f"## {MODEL_NAME}\nFine-tuned with hf_transfer, served by {SERVED_BY}. Enter an input and press **Predict**."
    )
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
