"""Publishing: turns an output folder into a Hub model repo (files + card) and, optionally, a Gradio Space for it.

Only what lies inside the folder travels (`RunFolder`); the card comes from `card.py`, the Space from `space.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.hf_api import RepoFile

from .card import (
    CARD,
    COMPARISON_MD,
    COMPARISON_PNG,
    public_recipe_as_written,
    public_recipe_text,
    render_model_card,
    write_model_card,
)
from .errors import PublishError, SourceError
from .run_folder import ADAPTER_DIR, RunFolder
from .runtimes import MANIFEST, ONNX_DIR, read_export
from .sources import redact_url, redact_urls_in
from .trust import allow_model_code

try:
    from httpx2 import TransportError  # the HTTP client of huggingface_hub >= 2
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    from httpx import TransportError

__all__ = [
    "COMPARISON_MD",
    "COMPARISON_PNG",
    "PublishError",
    "PublishResult",
    "public_recipe_text",
    "publish",
    "publish_files",
    "render_model_card",
    "write_model_card",
]

# Training state, logs and pickles stay local: only safetensors weights are published.
LOCAL_ONLY_SUFFIXES = (".log", ".jsonl", ".bin", ".pt", ".pth", ".pkl", ".ckpt")
# The secret a Space needs to read a private model: huggingface_hub inside the Space picks it up by this name.
SPACE_TOKEN_SECRET = "HF_TOKEN"


@dataclass(frozen=True)
class PublishResult:
    """What a publish did: `commit_oid` is None when the model repo already held exactly these files."""

    repo_url: str
    commit_oid: str | None
    space_url: str | None = None
    bytes_uploaded: int = 0
    files: list[str] = field(default_factory=list)


def publish_files(output_dir: Path, *, adapter: bool) -> dict[str, Path]:
    """The folder's files that go to the model repo (path in repo -> local path), the card excluded.

    Top-level files only (never `checkpoints/`, logs or pickles), and only those that resolve inside the folder: a
    symlink out of it is skipped with a warning. With `adapter=True` the merged weights are left out and the PEFT
    adapter files take their place at the top of the repo, beside the fine-tuned `config.json`. An ONNX export
    travels in `onnx/` (its manifest and the files it names) once checked against the weights it was made from.
    """
    folder = RunFolder(output_dir)
    files = {
        name: path
        for name, path in folder.listing().items()
        if not name.startswith(".") and name != CARD and not name.endswith(LOCAL_ONLY_SUFFIXES)
    }
    if adapter:
        files = {name: p for name, p in files.items() if not _is_model_weights(name)}
        for name, path in folder.listing(ADAPTER_DIR).items():
            if name.startswith("adapter_") and not name.endswith(LOCAL_ONLY_SUFFIXES):
                files[name] = path
    if read_export(folder) is not None:  # a stale export is refused here (ExportError), never pushed
        manifest = folder.json(f"{ONNX_DIR}/{MANIFEST}")
        named = [MANIFEST] + [variant["file"] for variant in manifest["variants"].values()]
        files.update({f"{ONNX_DIR}/{n}": p for n, p in folder.listing(ONNX_DIR).items() if n in named})
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
    trust_remote_code: bool = False,
    is_main_process: bool = True,
) -> PublishResult | None:
    """Push an output folder to the Hub model repo `repo_id` in one commit, and optionally a Gradio Space for it.

    The repo ends up holding exactly the folder's publishable files plus a freshly rendered card (stale files from an
    earlier push are deleted); an unchanged folder makes no commit. LoRA folders push their adapter unless
    `merge=True`. An existing repo is only updated with `exist_ok=True`. `space` creates/updates a Space whose
    `MODEL_ID` variable names the model. A public Space for a private model needs `space_secret_token_name`: the
    environment variable holding a read token, stored as the Space secret `HF_TOKEN`. A model that needs its own
    code gets a Space only when that code is hf_transfer's own architecture (`trust.py`) or `trust_remote_code` says
    the user trusts it. The local folder is never modified. Returns None on non-main processes (only the main
    process pushes).
    """
    if not is_main_process:
        return None
    folder = RunFolder(output_dir)
    if folder.file("config.json") is None:
        raise PublishError(f"{folder.path} is not an hf_transfer output folder (no config.json)")
    if space and private and not space_secret_token_name:
        raise PublishError(_PRIVATE_SPACE_MESSAGE.format(repo_id=repo_id))
    if space:
        _check_space_can_run(folder, space, trust_remote_code)
    adapter = folder.adapter and not merge
    files = _model_files(folder, repo_id, adapter)
    secret = _read_secret(space_secret_token_name) if space and space_secret_token_name else None
    space_files = _space_files(repo_id, folder.path, adapter, trust_remote_code) if space else {}
    strategy = folder.run.get("strategy", "")

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


def _model_files(folder: RunFolder, repo_id: str, adapter: bool) -> dict[str, Path | bytes]:
    """What the model repo holds: the folder's files, its card, and its records with local paths made public."""
    files: dict[str, Path | bytes] = dict(publish_files(folder.path, adapter=adapter))
    files[CARD] = render_model_card(folder.path, repo_id=repo_id, adapter=adapter).content.encode()
    if "recipe.yaml" in files:
        files["recipe.yaml"] = public_recipe_text(folder).encode()
    public = _public_run(folder)
    if "run.json" in files and public != folder.run:
        files["run.json"] = (json.dumps(public, indent=2) + "\n").encode()
    return files


def _public_run(folder: RunFolder) -> dict:
    """run.json as published: only examples whose files lie in the folder, the recipe as written without local
    paths (what the card shows)."""
    public = dict(folder.run)
    if "examples" in public:
        public["examples"] = folder.examples()
    written = public.get("recipe_as_written")
    if isinstance(written, dict) and written.get("text"):
        name, text, overrides = public_recipe_as_written(written, folder.run)
        public["recipe_as_written"] = {"file": name, "text": text, "overrides": overrides}
    return public


def _check_space_can_run(folder: RunFolder, space: str, trust_remote_code: bool) -> None:
    """Refuse, before anything is pushed, a Space that would have to run model code nobody vouched for."""
    try:
        allow_model_code(folder, trust_remote_code)
    except SourceError as error:
        raise PublishError(f"Refusing to create the Space {space}: {error}") from None


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


def _space_files(repo_id: str, output_dir: Path, adapter: bool, trust_remote_code: bool) -> dict[str, bytes]:
    # Imported here: the Space template is optional for users who only push models.
    from .space import render_space_files

    return render_space_files(repo_id, output_dir, adapter=adapter, trust_remote_code=trust_remote_code)


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
    return f"{redact_url(api.endpoint)}/{prefix}{repo_id}"


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
    except OfflineModeIsEnabled:
        raise PublishError(
            f"Publishing to {repo_id} needs the Hub, but HF_HUB_OFFLINE is set: unset it and publish again; the local "
            "folder is unchanged."
        ) from None
    except TransportError as err:
        raise PublishError(
            f"Publishing to {repo_id} failed: could not reach the Hub at {redact_url(api.endpoint)} "
            f"({type(err).__name__}: {redact_urls_in(str(err))})."
            " Check the connection and retry; the local folder is unchanged."
        ) from err
