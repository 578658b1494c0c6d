"""Model card and publishing: turns an output folder into a Hub model repo and, optionally, a Gradio Space."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
)
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import validate_repo_id

from .errors import PublishError
from .fileio import read_json

try:
    from httpx2 import TransportError  # the HTTP client of huggingface_hub >= 2
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    from httpx import TransportError

CARD = "README.md"
ADAPTER_DIR = "adapter"
# Training state, logs and pickles stay local: only safetensors weights are published.
LOCAL_ONLY_SUFFIXES = (".log", ".jsonl", ".bin", ".pt", ".pth", ".pkl", ".ckpt")
# The secret a Space needs to read a private model: huggingface_hub inside the Space picks it up by this name.
SPACE_TOKEN_SECRET = "HF_TOKEN"
HUB = "https://huggingface.co"


@dataclass(frozen=True)
class PublishResult:
    """What a publish did: `commit_oid` is None when the model repo already held exactly these files."""

    repo_url: str
    commit_oid: str | None
    space_url: str | None = None
    bytes_uploaded: int = 0
    files: list[str] = field(default_factory=list)


# -- model card -------------------------------------------------------------------------------------------------------


def render_model_card(
    output_dir: Path, *, repo_id: str | None = None, adapter: bool = False, comparison_md: str | None = None
) -> ModelCard:
    """Build the model card of an output folder: Hub metadata (with model-index results) and a readable body.

    `adapter=True` describes the PEFT adapter repo that `publish` pushes for LoRA runs. The card is a pure function of
    the folder's files (no dates), so an unchanged folder renders byte-identical cards.
    """
    output_dir = Path(output_dir)
    run = read_json(output_dir / "run.json")
    metrics = read_json(output_dir / "metrics.json")
    recipe_text = public_recipe_text(output_dir)
    recipe = yaml.safe_load(recipe_text) or {}
    config = read_json(output_dir / "config.json")
    repo_id = repo_id or (recipe.get("hub") or {}).get("repo_id")
    name = repo_id.split("/")[-1] if repo_id else output_dir.name
    base_model = _hub_id(run.get("base_model"))
    dataset = run.get("dataset") or {}
    dataset_id = _hub_id(dataset.get("id")) if dataset.get("source_kind") in ("hub", "mirror") else None
    strategy = run.get("strategy") or (recipe.get("strategy") or {}).get("kind", "unknown")
    pipeline_tag = run.get("pipeline_tag") or run.get("task")

    data = ModelCardData(
        model_name=name,
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=pipeline_tag,
        license=run.get("license"),
        tags=["hf_transfer", strategy],
        eval_results=_eval_results(metrics, pipeline_tag, dataset.get("id") or "custom") or None,
    )
    sections = [
        f"# {name}",
        _summary(run, strategy, base_model, dataset, adapter),
        _results(metrics),
        _per_class(run),
        _confusion(output_dir, run),
        _examples(run),
        f"## How to use\n\n```python\n{_usage(repo_id or f'your-username/{name}', run, config, adapter)}```",
        f"## Strategy comparison\n\n{comparison_md.strip()}" if comparison_md else _comparison(output_dir),
        _training(run, metrics, recipe, recipe_text),
        _reproducibility(run),
    ]
    body = "\n\n".join(s for s in sections if s)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def write_model_card(output_dir: Path) -> Path:
    """Write the folder's draft card (README.md): the card `publish` would push by default. Returns its path."""
    output_dir = Path(output_dir)
    card = render_model_card(output_dir, adapter=_has_adapter(output_dir))
    path = output_dir / CARD
    path.write_text(card.content, encoding="utf-8")
    return path


def _hub_id(name: str | None) -> str | None:
    """`name` when it has the form of a Hub repo ID (namespace/name), None for paths and anything else."""
    if not name or name.count("/") != 1:
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


COUNTS = {"examples"}
"""Entries of metrics.json that count rather than score: shown in the table, not reported as Hub metrics."""


def _eval_results(metrics: dict, task: str | None, dataset: str) -> list[EvalResult]:
    return [
        EvalResult(
            task_type=task or "text-classification",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=metric,
            metric_value=value,
        )
        for split, values in metrics.items()
        if split != "train" and isinstance(values, dict)
        for metric, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and metric not in COUNTS
    ]


def _link(repo_id: str | None, label: str | None, kind: str = "") -> str:
    return f"[{repo_id}]({HUB}/{kind}{repo_id})" if repo_id else f"`{label or 'a local model'}`"


def _summary(run: dict, strategy: str, base_model: str | None, dataset: dict, adapter: bool) -> str:
    source = dataset.get("id") or "a custom dataset"
    on = _link(source, source, "datasets/") if dataset.get("source_kind") in ("hub", "mirror") else f"`{source}`"
    what = "A LoRA adapter (PEFT) for" if adapter else "A fine-tuned version of"
    text = (
        f"{what} {_link(base_model, run.get('base_model'))} for **{run.get('task', 'classification')}** on {on}, "
        f"trained with `hf_transfer` using the **{strategy}** strategy."
    )
    labels = list((run.get("id2label") or {}).values())
    if labels:
        text += f"\n\nLabels: {', '.join(f'`{label}`' for label in labels)}."
    return text


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return _number(value).replace("|", "\\|").replace("\n", " ")

    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell(v) for v in line) + " |" for line in lines)


def _results(metrics: dict) -> str:
    splits = {s: v for s, v in metrics.items() if s != "train" and isinstance(v, dict)}
    names = sorted({m for values in splits.values() for m in values} - COUNTS)
    if not names:
        return ""
    names += sorted({m for values in splits.values() for m in values} & COUNTS)
    rows = [[split, *(values.get(m, "") for m in names)] for split, values in splits.items()]
    return "## Results\n\n" + _table(["split", *names], rows)


def _per_class(run: dict) -> str:
    per_class = run.get("per_class") or {}
    if not per_class:
        return ""
    keys = ["precision", "recall", "f1", "support"]
    rows = [[label, *(values.get(k, "") for k in keys)] for label, values in per_class.items()]
    return f"### Per-class metrics ({run.get('eval_split', 'evaluation')} split)\n\n" + _table(["label", *keys], rows)


def _confusion(output_dir: Path, run: dict) -> str:
    if not (output_dir / "confusion_matrix.png").exists():
        return ""
    split = run.get("eval_split", "evaluation")
    return f"### Confusion matrix ({split} split)\n\n![Confusion matrix](confusion_matrix.png)"


COMPARISON_MD = "strategy_comparison.md"
COMPARISON_PNG = "strategy_comparison.png"
"""Written into the winner's output folder by `hf-transfer compare`; they are published with it."""


def _comparison(output_dir: Path) -> str:
    if not (output_dir / COMPARISON_MD).is_file():
        return ""
    text = (output_dir / COMPARISON_MD).read_text(encoding="utf-8").strip()
    if (output_dir / COMPARISON_PNG).is_file():
        text += f"\n\n![Accuracy against trainable parameters]({COMPARISON_PNG})"
    return f"## Strategy comparison\n\n{text}"


def _examples(run: dict, limit: int = 5) -> str:
    examples = (run.get("examples") or [])[:limit]
    if not examples:
        return ""
    if "image" in examples[0]:  # image files shipped in the output folder's examples/
        rows = [[f"`{e['image']}`", e.get("label", ""), e.get("prediction", ""), e.get("score", "")] for e in examples]
        return "### Examples\n\n" + _table(["image", "label", "prediction", "score"], rows)
    rows = [
        [_short(e.get("text", "")), e.get("label", ""), e.get("prediction", ""), e.get("score", "")] for e in examples
    ]
    return "### Examples\n\n" + _table(["text", "label", "prediction", "score"], rows)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _usage(repo_id: str, run: dict, config: dict, adapter: bool) -> str:
    examples = run.get("examples") or []
    task = run.get("pipeline_tag") or "text-classification"
    if task == "image-classification":
        return _image_usage(repo_id, adapter)
    text = repr(_short(examples[0]["text"], 80)) if examples else repr("Replace me with your text")
    remote = ", trust_remote_code=True" if config.get("auto_map") else ""
    if adapter:
        # A Hub adapter repo makes pipeline() take the config (and labels) from the base model, so the labels come
        # from the config.json pushed beside the adapter; transformers then loads base + adapter (peft installed).
        return (
            "from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline\n\n"
            f'config = AutoConfig.from_pretrained("{repo_id}"{remote})\n'
            f'model = AutoModelForSequenceClassification.from_pretrained("{repo_id}", config=config{remote})\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
            f'classifier = pipeline("{task}", model=model, tokenizer=tokenizer)\n'
            f"print(classifier({text}))\n\n"
            "# or with PEFT directly:\n"
            "from peft import AutoPeftModelForSequenceClassification\n\n"
            "model = AutoPeftModelForSequenceClassification.from_pretrained(\n"
            f'    "{repo_id}", num_labels=config.num_labels, id2label=config.id2label, label2id=config.label2id\n'
            ")\n"
        )
    return (
        "from transformers import pipeline\n\n"
        f'classifier = pipeline("{task}", model="{repo_id}"{remote})\n'
        f"print(classifier({text}))\n"
    )


def _image_usage(repo_id: str, adapter: bool) -> str:
    if adapter:
        return (
            "from peft import PeftConfig, PeftModel\n"
            "from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline\n\n"
            f'config = AutoConfig.from_pretrained("{repo_id}")\n'
            f'base_id = PeftConfig.from_pretrained("{repo_id}").base_model_name_or_path\n'
            "base = AutoModelForImageClassification.from_pretrained(\n"
            "    base_id, num_labels=config.num_labels, id2label=config.id2label, label2id=config.label2id,\n"
            "    ignore_mismatched_sizes=True,\n"
            ")\n"
            f'model = PeftModel.from_pretrained(base, "{repo_id}").merge_and_unload()\n'
            f'classifier = pipeline("image-classification", model=model, '
            f'image_processor=AutoImageProcessor.from_pretrained("{repo_id}"))\n'
            'print(classifier("photo.jpg"))\n'
        )
    return (
        "from transformers import pipeline\n\n"
        f'classifier = pipeline("image-classification", model="{repo_id}")\n'
        'print(classifier("photo.jpg"))  # a path, a URL or a PIL image\n'
    )


def _training(run: dict, metrics: dict, recipe: dict, recipe_text: str) -> str:
    train = metrics.get("train") or {}
    trainable = run.get("trainable_params") or train.get("trainable_params")
    total = run.get("total_params") or train.get("total_params")
    lines = [f"- Strategy: **{run.get('strategy') or train.get('strategy', 'unknown')}**"]
    if trainable and total:
        lines.append(f"- Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    if "wall_s" in train:
        speed = f", {train['samples_per_s']:.1f} samples/s" if "samples_per_s" in train else ""
        lines.append(f"- Wall time: {train['wall_s']:.1f} s on {train.get('processes', 1)} process(es){speed}")
    hyper = {k: v for k, v in (recipe.get("training") or {}).items() if k != "output_dir" and v is not None}
    hyper.update({f"strategy.{k}": v for k, v in (recipe.get("strategy") or {}).items() if k != "kind"})
    text = "## Training\n\n" + "\n".join(lines)
    if hyper:
        text += "\n\n" + _table(["hyperparameter", "value"], [[k, str(v)] for k, v in hyper.items()])
    if recipe_text:
        text += f"\n\nThe recipe (`recipe.yaml` in this repo):\n\n```yaml\n{recipe_text.strip()}\n```"
    return text


def _reproducibility(run: dict) -> str:
    source = run.get("model_source") or {}
    base = f"`{source.get('hub_id') or run.get('base_model')}`"
    if source.get("kind") == "hub":
        base += f" at revision `{source.get('revision') or 'unknown'}`"
    elif source.get("kind") == "mirror":
        base += f" from the offline package `{source.get('package')}` {source.get('package_version')}"
    files = source.get("files") or {}
    dataset = run.get("dataset") or {}
    splits = ", ".join(f"{k}: {v}" for k, v in (dataset.get("splits") or {}).items())
    lines = [
        f"- Base model: {base}",
        *(f"  - `{name}` sha256 `{digest}`" for name, digest in files.items()),
        f"- Dataset: `{dataset.get('id')}` ({dataset.get('source_kind')}), fingerprint `{dataset.get('fingerprint')}`"
        + (f"; rows {splits}" if splits else ""),
        f"- Recipe sha256: `{run.get('recipe_sha256')}`",
    ]
    versions = run.get("versions") or {}
    if versions:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "## Reproducibility\n\n" + "\n".join(lines)


# -- publishing -------------------------------------------------------------------------------------------------------


def public_recipe_text(output_dir: Path) -> str:
    """The run's recipe as published: Hub IDs instead of local model/data paths, no local output folder.

    The local `recipe.yaml` keeps the paths (evaluate needs them); what leaves the machine names only Hub IDs.
    """
    path = Path(output_dir) / "recipe.yaml"
    if not path.exists():
        return ""
    recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    run = read_json(Path(output_dir) / "run.json")
    dataset = run.get("dataset") or {}
    recipe["model"] = run.get("base_model") or Path(str(recipe.get("model", ""))).name
    data = recipe.get("data") or {}
    if "source" in data and dataset.get("source_kind") not in ("hub", "mirror", "function"):
        data["source"] = dataset.get("id") or Path(str(data["source"])).name
    if data.get("files"):
        data["files"] = {split: Path(str(f)).name for split, f in data["files"].items()}
    strategy = recipe.get("strategy") or {}
    if isinstance(strategy.get("feature_cache"), str):
        strategy["feature_cache"] = None  # a local cache folder means nothing elsewhere
    training = recipe.get("training") or {}
    if "output_dir" in training:
        training["output_dir"] = f"outputs/{Path(str(training['output_dir'])).name}"
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


def _has_adapter(output_dir: Path) -> bool:
    return (output_dir / ADAPTER_DIR / "adapter_config.json").is_file()


def publish_files(output_dir: Path, *, adapter: bool) -> dict[str, Path]:
    """The folder's files that go to the model repo (path in repo -> local path), the card excluded.

    Top-level files only (never `checkpoints/`, logs or pickles). With `adapter=True` the merged weights are left out
    and the PEFT adapter files take their place at the top of the repo, beside the fine-tuned `config.json`.
    """
    output_dir = Path(output_dir)
    files = {
        p.name: p
        for p in sorted(output_dir.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name != CARD and not p.name.endswith(LOCAL_ONLY_SUFFIXES)
    }
    if adapter:
        files = {name: p for name, p in files.items() if not _is_model_weights(name)}
        for p in sorted((output_dir / ADAPTER_DIR).iterdir()):
            if p.name.startswith("adapter_") and not p.name.endswith(LOCAL_ONLY_SUFFIXES):
                files[p.name] = p
    return files


def _is_model_weights(name: str) -> bool:
    return name.startswith("model") and (name.endswith(".safetensors") or name.endswith(".safetensors.index.json"))


def publish(
    output_dir: Path,
    repo_id: str,
    *,
    space: str | None = None,
    private: bool = False,
    merge: bool = False,
    exist_ok: bool = False,
    token: str | None = None,
    space_secret_token_name: str | None = None,
    is_main_process: bool = True,
) -> PublishResult | None:
    """Push an output folder to the Hub model repo `repo_id` in one commit, and optionally a Gradio Space for it.

    The repo ends up holding exactly the folder's publishable files plus a freshly rendered card (stale files from an
    earlier push are deleted); an unchanged folder makes no commit. LoRA folders push their adapter unless
    `merge=True`. An existing repo is only updated with `exist_ok=True`. `space` creates/updates a Space whose
    `MODEL_ID` variable names the model. A public Space for a private model needs `space_secret_token_name`: the
    environment variable holding a read token, stored as the Space secret `HF_TOKEN`. The local folder is never
    modified. Returns None on non-main processes (only the main process pushes).
    """
    if not is_main_process:
        return None
    output_dir = Path(output_dir)
    if not (output_dir / "config.json").is_file():
        raise PublishError(f"{output_dir} is not an hf_transfer output folder (no config.json)")
    if space and private and not space_secret_token_name:
        raise PublishError(_PRIVATE_SPACE_MESSAGE.format(repo_id=repo_id))
    adapter = _has_adapter(output_dir) and not merge
    files: dict[str, Path | bytes] = dict(publish_files(output_dir, adapter=adapter))
    files[CARD] = render_model_card(output_dir, repo_id=repo_id, adapter=adapter).content.encode()
    if "recipe.yaml" in files:
        files["recipe.yaml"] = public_recipe_text(output_dir).encode()
    secret = _read_secret(space_secret_token_name) if space and space_secret_token_name else None
    space_files = _space_files(repo_id, output_dir, adapter) if space else {}
    strategy = read_json(output_dir / "run.json").get("strategy", "")

    api = HfApi(token=token)
    with _hub_errors(api, repo_id):
        repo_url = _ensure_repo(api, repo_id, "model", private, exist_ok)
        # An existing repo keeps its visibility whatever `private` says: ask the Hub.
        if space and secret is None and api.repo_info(repo_id).private:
            raise PublishError(_PRIVATE_SPACE_MESSAGE.format(repo_id=repo_id))
        message = f"Publish {'adapter' if adapter else 'model'} ({strategy or 'fine-tuned'}) with hf_transfer"
        commit_oid, uploaded = _sync(api, repo_id, "model", files, message, delete_stale=True)
    space_url = None
    if space:
        with _hub_errors(api, space):
            space_url = _ensure_repo(api, space, "space", False, exist_ok)
            if _variable(api, space) != repo_id:  # setting a variable restarts the Space: only when it changes
                api.add_space_variable(space, "MODEL_ID", repo_id)
            if secret is not None:
                api.add_space_secret(space, SPACE_TOKEN_SECRET, secret)
            _sync(api, space, "space", dict(space_files), f"Demo for {repo_id}", delete_stale=False)
    return PublishResult(repo_url, commit_oid, space_url, uploaded, sorted(files))


_PRIVATE_SPACE_MESSAGE = (
    "Refusing to create a public Space for the private model {repo_id}: the Space could not load it. Pass "
    "--space-token-secret NAME (space_secret_token_name=NAME), where the environment variable NAME holds a "
    "read token; it is stored as the Space secret HF_TOKEN."
)


def _variable(api: HfApi, space: str) -> str | None:
    variable = api.get_space_variables(space).get("MODEL_ID")
    return variable.value if variable else None


def _read_secret(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise PublishError(f"The environment variable {name} (space_secret_token_name) is not set or empty")
    return value


def _space_files(repo_id: str, output_dir: Path, adapter: bool) -> dict[str, bytes]:
    # Imported here: the Space template is optional for users who only push models.
    from hf_transfer.space import render_space_files

    return render_space_files(repo_id, output_dir, adapter=adapter)


def _ensure_repo(api: HfApi, repo_id: str, repo_type: str, private: bool, exist_ok: bool) -> str:
    """Create the repo; an existing one is fine only with `exist_ok`. Returns its URL."""
    try:
        sdk = "gradio" if repo_type == "space" else None
        # private=None rather than False: an organization whose repos are private by default stays so.
        return str(api.create_repo(repo_id, repo_type=repo_type, private=private or None, space_sdk=sdk))
    except HfHubHTTPError as err:
        if err.response is None or err.response.status_code != 409:
            raise
    if not exist_ok:
        raise PublishError(
            f"The {repo_type} repo {repo_id} already exists on the Hub. Pass --exist-ok (exist_ok=True) to update it."
        )
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{api.endpoint}/{prefix}{repo_id}"


def _sync(
    api: HfApi, repo_id: str, repo_type: str, files: dict[str, Path | bytes], message: str, *, delete_stale: bool
) -> tuple[str | None, int]:
    """Commit what differs from the repo's head; returns (commit oid or None when nothing changed, bytes sent)."""
    head = api.repo_info(repo_id, repo_type=repo_type).sha
    remote = {
        f.path: f
        for f in api.list_repo_tree(repo_id, repo_type=repo_type, revision=head, recursive=True)
        if isinstance(f, RepoFile)
    }
    changed = {path: src for path, src in files.items() if not _same_content(src, remote.get(path))}
    stale = [p for p in remote if p not in files and p != ".gitattributes"] if delete_stale else []
    if not changed and not stale:
        return None, 0
    operations = [
        CommitOperationAdd(path, src if isinstance(src, bytes) else str(src)) for path, src in changed.items()
    ] + [CommitOperationDelete(path) for path in stale]
    info = api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type, parent_commit=head)
    return info.oid, sum(len(src) if isinstance(src, bytes) else src.stat().st_size for src in changed.values())


def _same_content(src: Path | bytes, remote: RepoFile | None) -> bool:
    """Whether the repo already holds these bytes: git blob id for regular files, sha256 for LFS/Xet ones."""
    size = len(src) if isinstance(src, bytes) else src.stat().st_size
    if remote is None or remote.size != size:
        return False
    if remote.lfs is not None:
        return _digest("sha256", src) == remote.lfs.sha256
    return _digest("sha1", src, b"blob %d\0" % size) == remote.blob_id


def _digest(algorithm: str, src: Path | bytes, prefix: bytes = b"") -> str:
    hasher = hashlib.new(algorithm, prefix)
    if isinstance(src, bytes):
        hasher.update(src)
        return hasher.hexdigest()
    with src.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


@contextmanager
def _hub_errors(api: HfApi, repo_id: str) -> Iterator[None]:
    """Turn the client's HTTP and network errors into PublishErrors that say what to do (and never show a token)."""
    try:
        yield
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        namespace = repo_id.split("/")[0]
        hint = {
            401: "The Hub rejected the credentials (401). Log in with `hf auth login` or set HF_TOKEN to a token with "
            "write access.",
            403: f"Your token may not write to the namespace '{namespace}' (403). Use your own namespace or an "
            "organization where you have write access, and a token with write permission.",
            404: "The repo was not found or is not accessible with this token (404).",
            412: "The repo changed on the Hub during the push (412). Publish again.",
        }.get(status, f"The Hub answered {status}: {err.server_message or 'no details'}. Retry later.")
        raise PublishError(f"Publishing to {repo_id} failed. {hint} The local folder is unchanged.") from err
    except TransportError as err:
        raise PublishError(
            f"Publishing to {repo_id} failed: could not reach the Hub at {api.endpoint} ({type(err).__name__}: {err})."
            " Check the connection and retry; the local folder is unchanged."
        ) from err
