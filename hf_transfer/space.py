"""The Gradio Space: render the `space/` template (app.py, the task's I/O module, requirements.txt, README.md) for a
model, and run it locally. Whether the app may run the model's own code is decided by `trust.py`."""

from __future__ import annotations

import ast
import atexit
import importlib.util
import json
import os
import re
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .run_folder import EXAMPLE_FILE_KEYS, RunFolder
from .runtimes import choose_runtime, read_export
from .trust import allow_model_code, check_code

if TYPE_CHECKING:
    import gradio as gr

# The Gradio release the template was last tested with; used only when Gradio is not installed here.
TESTED_GRADIO = "6.31.0"
TESTED_ONNXRUNTIME = "1.32.0"
MAX_EXAMPLES = 8
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# In app.py each placeholder is a whole string literal, so the template itself stays valid Python.
CODE_PLACEHOLDER = re.compile(r'"\{\{(\w+)\}\}"')


def template_dir() -> Path:
    """The Space template: the copy inside an installed wheel, else the source tree's `space/` (editable install)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "space_template", package.parent / "space"):
        if (candidate / "app.py").is_file():
            return candidate
    raise FileNotFoundError(f"Space template not found in {package / 'space_template'} or {package.parent / 'space'}")


def task_io_file(task: str) -> str:
    """The template's I/O module for a pipeline tag: what differs by task in the app."""
    return f"io_{task.replace('-', '_')}.py"


def render_space_files(
    repo_id: str,
    output_dir: Path | None,
    *,
    adapter: bool | None = None,
    trust_remote_code: bool = False,
) -> dict[str, bytes]:
    """Fill the Space template for `repo_id`; returns file name -> content, ready to upload in one commit.

    Always app.py, requirements.txt, README.md and the I/O module of the folder's task (run.json's pipeline tag; every
    task's when there is no folder to say, e.g. a Hub repo); examples.json (and `examples/` images) when run.json has
    examples inside the folder. `output_dir` is the training output folder (None when there is none).
    `adapter`: the repo holds a PEFT adapter, which adds peft to the requirements (default: the folder has one).
    `trust_remote_code`: the user trusts the model's own code. Without it the app runs only hf_transfer's own
    architecture, pinned by the sha256 of its modeling file (`trust.check_code`).
    """
    folder = RunFolder(output_dir) if output_dir is not None else None
    template = template_dir()
    task = folder.run.get("pipeline_tag") if folder else None
    tasks = [task] if task else sorted(p.stem.removeprefix("io_").replace("_", "-") for p in template.glob("io_*.py"))
    if not (template / task_io_file(tasks[0])).is_file():
        raise FileNotFoundError(f"the Space template has no {task_io_file(tasks[0])}: no Space for {task} models yet")
    io_modules = {task_io_file(t): (template / task_io_file(t)).read_text(encoding="utf-8") for t in tasks}
    # A timm model (TimmWrapper) needs timm in the Space; transformers' own vision models do not.
    is_timm = folder is not None and folder.config.get("model_type") == "timm_wrapper"
    if adapter is None:
        adapter = folder is not None and (folder.adapter or folder.file("adapter_config.json") is not None)
    # An ONNX export (checked against the weights: a stale one is refused here) adds onnxruntime, pinned.
    onnx = folder is not None and read_export(folder) is not None
    trusted_repo, code_sha256 = _code_trust(repo_id, folder, trust_remote_code)
    name = repo_id.rstrip("/").rsplit("/", 1)[-1]
    values = {
        "REPO_ID": repo_id,
        "TRUSTED_REPO": trusted_repo,
        "TRUSTED_CODE_SHA256": code_sha256,
        "TITLE": name,
        "EMOJI": _constant(io_modules[task_io_file(task)], "EMOJI") if task else "🤗",
        "SDK_VERSION": _gradio_version(),
        # The Hub rejects a Space whose short_description is over 60 characters.
        "SHORT_DESCRIPTION": f"{(task or 'classification').replace('-', ' ').capitalize()} demo of {name}"[:60],
    }
    readme = (template / "README.md").read_text(encoding="utf-8")
    _, front_matter, body = readme.split("---\n", 2)
    texts = {
        "app.py": _fill((template / "app.py").read_text(encoding="utf-8"), values, CODE_PLACEHOLDER, quote=True),
        **io_modules,
        "requirements.txt": _fill(
            _requirements(
                (template / "requirements.txt").read_text(encoding="utf-8"),
                {"adapter": adapter, "timm": is_timm, "onnx": onnx},
                tasks,
            ),
            {"ONNXRUNTIME_VERSION": _installed("onnxruntime", TESTED_ONNXRUNTIME)},
        ),
        "README.md": "---\n" + _fill(front_matter, values, quote=True) + "---\n" + _fill(body, values),
    }
    files = {filename: text.encode("utf-8") for filename, text in texts.items()}
    files.update(_examples(folder) if folder else {})
    return files


def _constant(source: str, name: str) -> str:
    """The string constant `name` of a template module, read without importing it (it needs gradio)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return str(ast.literal_eval(node.value))
    raise ValueError(f"the Space template module defines no {name}")


def _code_trust(repo_id: str, folder: RunFolder | None, trust_remote_code: bool) -> tuple[str, str]:
    """(TRUSTED_REPO, TRUSTED_CODE_SHA256) for app.py: whose code the app may run, pinned to which modeling file."""
    if folder is None:
        return (repo_id if trust_remote_code else ""), ""
    check = check_code(folder)
    if not check.references:
        return "", ""
    if check.own_sha256:
        return repo_id, check.own_sha256
    return (repo_id if trust_remote_code else ""), ""


def launch_demo(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    prevent_thread_lock: bool = False,
    trust_remote_code: bool = False,
    runtime: str | None = None,
) -> gr.Blocks:
    """Run the Space's own app.py locally on an output folder (offline) or a Hub repo ID; returns the Gradio app.

    Without `trust_remote_code` a local folder's code runs only when it is hf_transfer's own architecture (a folder
    that needs other code is refused here, with one clear line), and a Hub repo's never. The page is titled with
    the folder's name or the repo ID. With `prevent_thread_lock=True` this returns at once; `.close()` stops it.
    `runtime`: as for predict (`runtimes.choose_runtime`, checked here for a folder); a Hub repo's app checks its
    own export and serves it when it verifies.
    """
    folder = Path(model)
    if folder.is_dir():
        allow_model_code(RunFolder(folder), trust_remote_code)
        runtime = choose_runtime(RunFolder(folder), runtime)
        model_id = str(folder.resolve())
        files = render_space_files(model_id, folder, trust_remote_code=trust_remote_code)
    else:
        model_id = str(model)
        files = render_space_files(model_id, None, trust_remote_code=trust_remote_code)
    workdir = Path(tempfile.mkdtemp(prefix="hf-transfer-demo-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    for filename, content in files.items():
        (workdir / filename).parent.mkdir(parents=True, exist_ok=True)
        (workdir / filename).write_bytes(content)
    # Offline by default: no version check or usage analytics unless the user opted in.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = _import_app(workdir / "app.py", model_id, runtime)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock)
    return app.demo


def _import_app(path: Path, model_id: str, runtime: str | None = None) -> Any:
    """Execute app.py as a fresh module with MODEL_ID (and RUNTIME) set, as the app reads them at import; the
    variables are restored afterwards."""
    values = {"MODEL_ID": model_id, "RUNTIME": runtime}
    previous = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        spec = importlib.util.spec_from_file_location("hf_transfer_space_app", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return module


def _fill(text: str, values: dict[str, str], pattern: re.Pattern[str] = PLACEHOLDER, quote: bool = False) -> str:
    """Replace the placeholders `pattern` finds with their values, JSON-quoted when `quote` is set.

    A JSON string is both a valid Python string literal and a valid YAML scalar, so quoting keeps any repo ID or
    title from breaking out of its string in app.py or the front matter.
    """
    return re.sub(
        pattern, lambda match: json.dumps(values[match[1]], ensure_ascii=False) if quote else values[match[1]], text
    )


def _requirements(template: str, keep: dict[str, bool], tasks: list[str]) -> str:
    """Keep the `# if NAME` lines whose NAME is set in `keep` or is one of the Space's tasks, without their markers."""
    lines = []
    for line in template.splitlines():
        requirement, _, condition = line.partition("  # if ")
        if not condition or keep.get(condition.strip()) or condition.strip() in tasks:
            lines.append(requirement)
    return "\n".join(lines) + "\n"


def _examples(folder: RunFolder) -> dict[str, bytes]:
    """examples.json with up to MAX_EXAMPLES distinct real inputs; example files travel beside it in `examples/`.

    An example's input is its file (run.json's `image`: a path that must resolve inside the output folder, else the
    example is skipped and nothing is shipped) or else its `text`.
    """
    files: dict[str, bytes] = {}
    inputs: list[str] = []
    seen: set[str] = set()
    for example in folder.examples():
        key = next((k for k in EXAMPLE_FILE_KEYS if k in example), "text")
        value = example.get(key)
        if not isinstance(value, str) or not value.strip() or value in seen:
            continue
        seen.add(value)
        if key == "text":
            inputs.append(value)
        else:
            shipped = f"examples/{len(inputs)}{Path(value).suffix.lower()}"
            files[shipped] = folder.file(value).read_bytes()
            inputs.append(shipped)
        if len(inputs) == MAX_EXAMPLES:
            break
    if inputs:
        files["examples.json"] = (json.dumps(inputs, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    return files


def _gradio_version() -> str:
    """The installed Gradio release (what the app runs with here), else the release the template was tested with."""
    return _installed("gradio", TESTED_GRADIO)


def _installed(package: str, tested: str) -> str:
    """The installed release of `package` (what the app was checked with here), else the release last tested."""
    try:
        return version(package)
    except PackageNotFoundError:
        return tested
