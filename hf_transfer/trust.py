"""The one rule for running a model folder's own code: trusted by content, never by what the folder says of itself.

A folder's configs may name code for transformers to import (`auto_map`). That code runs only when it is exactly
hf_transfer's own architecture — `modeling_hf_transfer.py` byte for byte what this hf_transfer writes for the folder's
config, and every `auto_map` entry naming a class hf_transfer ships in it — or when the user passes
`--trust-remote-code`. run.json's claims play no part. predict, evaluate, demo, publish and the rendered Space all
decide here (the Space app, which cannot import hf_transfer, re-checks the digest this module computes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .errors import SourceError
from .fileio import file_sha256
from .pooled import POOLED_MODEL_CLASS, POOLED_MODEL_FILE, pooled_model_source
from .run_folder import RunFolder

OWN_MODULE = POOLED_MODEL_FILE.removesuffix(".py")
OWN_CLASSES = (POOLED_MODEL_CLASS,)
"""The classes hf_transfer ships in its own architecture file: the only ones an `auto_map` entry may name."""
OWN_REFERENCES = frozenset(f"{OWN_MODULE}.{name}" for name in OWN_CLASSES)
CODE_CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
"""The files whose `auto_map` makes transformers import code from the folder (or from another repo)."""


@dataclass(frozen=True)
class CodeCheck:
    """What a folder asks to run and whether it is hf_transfer's own architecture."""

    references: tuple[str, ...]
    """Every class reference the folder's configs name, as `file: reference`."""
    own_sha256: str | None
    """The sha256 of its modeling file when the folder's code is exactly hf_transfer's own architecture."""
    problem: str | None
    """Why the code is not hf_transfer's own (None when it is, or when the folder names no code)."""


def code_references(folder: RunFolder) -> list[tuple[str, str]]:
    """(config file, class reference) for every `auto_map` entry of the folder's configs, in file order."""
    found = []
    for name in CODE_CONFIGS:
        auto_map = (folder.config if name == "config.json" else folder.json(name)).get("auto_map") or {}
        for value in auto_map.values() if isinstance(auto_map, dict) else [auto_map]:
            found += [(name, str(ref)) for ref in (value if isinstance(value, list) else [value]) if ref]
    return found


def check_code(folder: RunFolder) -> CodeCheck:
    """Whether the folder's code (if any) is hf_transfer's own architecture, and why not."""
    references = code_references(folder)
    shown = tuple(f"{name}: {ref}" for name, ref in references)
    if not references:
        return CodeCheck((), None, None)
    problem = _not_own(folder, references)
    if problem:
        return CodeCheck(shown, None, problem)
    return CodeCheck(shown, file_sha256(folder.file(POOLED_MODEL_FILE)), None)


def _not_own(folder: RunFolder, references: list[tuple[str, str]]) -> str | None:
    for name, ref in references:
        if "--" in ref:
            return f"{name} points at another repository's code ({ref})"
        if name != "config.json" or ref not in OWN_REFERENCES:
            return f"{name} names {ref}, not hf_transfer's {' or '.join(sorted(OWN_REFERENCES))}"
    path = folder.file(POOLED_MODEL_FILE)
    if path is None:
        return f"{POOLED_MODEL_FILE} is missing from the folder"
    expected = _own_source(folder.config)
    if expected is None:
        return f"model_type {folder.config.get('model_type')!r} is not an architecture transformers knows"
    if file_sha256(path) != hashlib.sha256(expected).hexdigest():
        return f"{POOLED_MODEL_FILE} is not the file this hf_transfer writes for its config (it was changed)"
    return None


def _own_source(config: dict) -> bytes | None:
    """The bytes of the modeling file the installed hf_transfer writes for this config, None for an unknown type."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return None
    try:
        parsed = CONFIG_MAPPING[model_type].from_dict({k: v for k, v in config.items() if k != "auto_map"})
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    return pooled_model_source(parsed).encode("utf-8")


def allow_model_code(folder: RunFolder, trust_remote_code: bool = False) -> bool:
    """Whether loading the folder passes `trust_remote_code=True`.

    False when it names no code. True for hf_transfer's own architecture, or for any code with the user's explicit
    `trust_remote_code`. Otherwise a SourceError: loading it without its code would not fail — transformers would
    quietly build its own class for the model_type, with a different head, and predict nonsense.
    """
    check = check_code(folder)
    if not check.references:
        return False
    if check.own_sha256 or trust_remote_code:
        return True
    raise SourceError(
        f"{folder.path} needs model code of its own ({'; '.join(check.references)}), and it is not hf_transfer's "
        f"own architecture: {check.problem}. That code is not run. Pass --trust-remote-code only if you trust "
        "where this folder came from."
    )
