"""The Gradio Space: render the `space/` template (app.py, requirements.txt, README.md) for a model, and run it."""

from __future__ import annotations

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

from .fileio import read_json

if TYPE_CHECKING:
    import gradio as gr

# The Gradio release the template was last tested with; used only when Gradio is not installed here.
TESTED_GRADIO = "6.31.0"
MAX_EXAMPLES = 8
OWN_MODULE = "modeling_hf_transfer"
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


def is_own_architecture(folder: Path) -> bool:
    """Whether `folder` is an hf_transfer output whose remote code is only its own `modeling_hf_transfer.py`.

    Only then may the app pass `trust_remote_code=True`: run.json must say hf_transfer wrote the folder with its
    own architecture (`produced_by`, `trust_remote_code`), and the config's `auto_map` must point at that file in
    the folder alone, never at another repo's code (`other/repo--module.Class`).
    """
    folder = Path(folder)
    run = read_json(folder / "run.json")
    auto_map = read_json(folder / "config.json").get("auto_map") or {}
    refs = [ref for value in auto_map.values() for ref in (value if isinstance(value, list) else [value]) if ref]
    return (
        run.get("produced_by") == "hf_transfer"
        and run.get("trust_remote_code") is True
        and {ref.rsplit(".", 1)[0] for ref in refs} == {OWN_MODULE}
        and (folder / f"{OWN_MODULE}.py").is_file()
    )


def render_space_files(
    repo_id: str,
    output_dir: Path | None,
    *,
    adapter: bool | None = None,
    trust_remote_code: bool | None = None,
) -> dict[str, bytes]:
    """Fill the Space template for `repo_id`; returns file name -> content, ready to upload in one commit.

    Always app.py, requirements.txt and README.md; examples.json (and `examples/` images) when the output folder's
    run.json has examples. `output_dir` is the training output folder (None when there is none, e.g. a Hub repo).
    `adapter`: the repo holds a PEFT adapter, which adds peft to the requirements (default: the folder has one).
    `trust_remote_code`: app.py may run `repo_id`'s own code (default: `is_own_architecture(output_dir)`).
    """
    folder = Path(output_dir) if output_dir is not None else None
    run = read_json(folder / "run.json") if folder else {}
    task = run.get("pipeline_tag") or "text-classification"
    is_image = task == "image-classification"
    # A timm model (TimmWrapper) needs timm in the Space; transformers' own vision models do not.
    is_timm = folder is not None and read_json(folder / "config.json").get("model_type") == "timm_wrapper"
    if adapter is None:
        adapter = folder is not None and any(
            (folder / sub / "adapter_config.json").is_file() for sub in ("adapter", "")
        )
    if trust_remote_code is None:
        trust_remote_code = folder is not None and is_own_architecture(folder)
    name = repo_id.rstrip("/").rsplit("/", 1)[-1]
    values = {
        "REPO_ID": repo_id,
        "TRUSTED_REPO": repo_id if trust_remote_code else "",
        "TITLE": name,
        "EMOJI": "🖼️" if is_image else "📝",
        "SDK_VERSION": _gradio_version(),
        # The Hub rejects a Space whose short_description is over 60 characters.
        "SHORT_DESCRIPTION": f"{task.replace('-', ' ').capitalize()} demo of {name}"[:60],
    }
    template = template_dir()
    readme = (template / "README.md").read_text(encoding="utf-8")
    _, front_matter, body = readme.split("---\n", 2)
    files = {
        "app.py": _fill((template / "app.py").read_text(encoding="utf-8"), values, CODE_PLACEHOLDER, quote=True),
        "requirements.txt": _requirements(
            (template / "requirements.txt").read_text(encoding="utf-8"), adapter, is_image, is_timm
        ),
        "README.md": "---\n" + _fill(front_matter, values, quote=True) + "---\n" + _fill(body, values),
    }
    files = {filename: text.encode("utf-8") for filename, text in files.items()}
    files.update(_examples(run.get("examples") or [], folder, is_image))
    return files


def launch_demo(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    prevent_thread_lock: bool = False,
    trust_remote_code: bool | None = None,
) -> gr.Blocks:
    """Run the Space's own app.py locally on an output folder (offline) or a Hub repo ID; returns the Gradio app.

    `trust_remote_code` left at None runs a local folder's code only when `is_own_architecture` says it is
    hf_transfer's, and never a Hub repo's. With `prevent_thread_lock=True` this returns at once; `.close()` stops it.
    """
    folder = Path(model)
    if folder.is_dir():
        model_id = str(folder.resolve())
        files = render_space_files(model_id, folder, trust_remote_code=trust_remote_code)
    else:
        model_id = str(model)
        files = render_space_files(model_id, None, trust_remote_code=bool(trust_remote_code))
    workdir = Path(tempfile.mkdtemp(prefix="hf-transfer-demo-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    for filename, content in files.items():
        (workdir / filename).parent.mkdir(parents=True, exist_ok=True)
        (workdir / filename).write_bytes(content)
    # Offline by default: no version check or usage analytics unless the user opted in.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = _import_app(workdir / "app.py", model_id)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock)
    return app.demo


def _import_app(path: Path, model_id: str) -> Any:
    """Execute app.py as a fresh module with MODEL_ID set (the app reads it at import), restoring the variable."""
    previous = os.environ.get("MODEL_ID")
    os.environ["MODEL_ID"] = model_id
    try:
        spec = importlib.util.spec_from_file_location("hf_transfer_space_app", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            os.environ.pop("MODEL_ID", None)
        else:
            os.environ["MODEL_ID"] = previous
    return module


def _fill(text: str, values: dict[str, str], pattern: re.Pattern[str] = PLACEHOLDER, quote: bool = False) -> str:
    """Replace the placeholders `pattern` finds with their values, JSON-quoted when `quote` is set.

    A JSON string is both a valid Python string literal and a valid YAML scalar, so quoting keeps any repo ID or
    title from breaking out of its string in app.py or the front matter.
    """
    return re.sub(
        pattern, lambda match: json.dumps(values[match[1]], ensure_ascii=False) if quote else values[match[1]], text
    )


def _requirements(template: str, adapter: bool, is_image: bool, is_timm: bool = False) -> str:
    """Keep the `# if adapter` / `# if image` / `# if timm` lines only when they apply, without their markers."""
    keep = {"adapter": adapter, "image": is_image, "timm": is_timm}
    lines = []
    for line in template.splitlines():
        requirement, _, condition = line.partition("  # if ")
        if not condition or keep[condition.strip()]:
            lines.append(requirement)
    return "\n".join(lines) + "\n"


def _examples(examples: list[dict], folder: Path | None, is_image: bool) -> dict[str, bytes]:
    """examples.json with up to MAX_EXAMPLES distinct real inputs; image examples travel as files beside it.

    A text example is run.json's `text`; an image example is its `image`, a path inside the output folder.
    """
    files: dict[str, bytes] = {}
    inputs: list[str] = []
    seen: set[str] = set()
    for example in examples:
        value = example.get("image" if is_image else "text")
        if not isinstance(value, str) or not value.strip() or value in seen:
            continue
        seen.add(value)
        if not is_image:
            inputs.append(value)
        elif folder is not None and (folder / value).is_file():
            shipped = f"examples/{len(inputs)}{Path(value).suffix.lower()}"
            files[shipped] = (folder / value).read_bytes()
            inputs.append(shipped)
        if len(inputs) == MAX_EXAMPLES:
            break
    if inputs:
        files["examples.json"] = (json.dumps(inputs, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    return files


def _gradio_version() -> str:
    """The installed Gradio release (what the app runs with here), else the release the template was tested with."""
    try:
        return version("gradio")
    except PackageNotFoundError:
        return TESTED_GRADIO
