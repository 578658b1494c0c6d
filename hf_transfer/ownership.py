"""Ownership of folders: whether hf_transfer may write into a folder or clear it (it clears only what it wrote, in a
folder it marked), which places it never writes a run into, and the lock that keeps one run per output folder."""

from __future__ import annotations

import fnmatch
import functools
import importlib.metadata
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ParamSpec, TypeVar

from .errors import OutputDirError
from .fileio import read_json, write_json_atomic

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there go unlocked (a warning says so)
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .recipe import Recipe

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

RUN = "run"
MARKER_PREFIX = ".hf_transfer-"
LOCK_FILE = ".hf_transfer-lock"
"""Inside the output folder while a run holds it; flock locks die with their process, so a killed run never blocks."""

# What a run writes at the top of its folder (outputs.save_output_folder, hub.write_model_card, compare.write_report,
# checkpoints, the tensorboard tracker under the run name "hf_transfer"); anything else there is the user's.
RUN_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.jinja",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
        "tokenizer.model",
        "preprocessor_config.json",
        "processor_config.json",
        "modeling_hf_transfer.py",
        "recipe.yaml",
        "metrics.json",
        "run.json",
        "train_log.jsonl",
        "README.md",
        "confusion_matrix.png",
        "strategy_comparison.md",
        "strategy_comparison.png",
        LOCK_FILE,
        MARKER_PREFIX + RUN,
    }
)
RUN_FOLDERS = frozenset({"checkpoints", "adapter", "examples", "hf_transfer", "onnx"})
RUN_PATTERNS = ("model-*-of-*.safetensors", ".*.tmp")  # weight shards; fileio's atomic writes cut short by a kill


# -- markers ---------------------------------------------------------------------------------------------------------


def marker_path(folder: Path, kind: str) -> Path:
    """`.hf_transfer-run` in a run folder; `.hf_transfer-compare` / `.hf_transfer-advise` beside those reports."""
    return folder / f"{MARKER_PREFIX}{kind}"


def read_marker(folder: Path, kind: str) -> dict[str, Any] | None:
    """The marker hf_transfer wrote in `folder` for `kind`, or None when there is none (or it is not ours)."""
    path = marker_path(folder, kind)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("produced_by") != "hf_transfer" or data.get("kind") != kind:
        return None
    return data


def _version() -> str:
    try:
        return importlib.metadata.version("hf-transfer-recipes")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def write_marker(folder: Path, kind: str, files: Iterable[str] = ()) -> None:
    """Mark `folder` as written by hf_transfer; `files` are the names it wrote there beyond the fixed ones."""
    write_json_atomic(
        marker_path(folder, kind),
        {"produced_by": "hf_transfer", "kind": kind, "version": _version(), "files": sorted(set(files))},
    )


def _entries(folder: Path) -> list[str]:
    """The names in `folder`, sorted, leaving out the lock file (a killed run's lock is no content)."""
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE) if folder.is_dir() else []


def is_run_file(folder: Path, name: str, recorded: set[str]) -> bool:
    """Is `name` in a marked run folder hf_transfer's to delete: a file or folder every run writes, or one that the
    marker records this folder's run wrote (`recorded`)?"""
    if name in RUN_FOLDERS:
        return (folder / name).is_dir() and not (folder / name).is_symlink()
    return name in RUN_FILES or name in recorded or any(fnmatch.fnmatchcase(name, p) for p in RUN_PATTERNS)


# -- where a run may go ----------------------------------------------------------------------------------------------


def _recipe_inputs(recipe: Recipe | None, recipe_file: str | Path | None) -> list[tuple[str, Path]]:
    """What the run reads from disk, each with the words that name it in a message."""
    inputs = [(f"the recipe file {str(recipe_file)!r}", Path(recipe_file))] if recipe_file else []
    if recipe is None:
        return inputs
    for key, value in (("model", recipe.model), ("data.source", recipe.data.source)):
        if Path(value).expanduser().exists():  # a Hub ID or `module:function` names no local path
            inputs.append((f"{value!r} ({key})", Path(value)))
    for split, value in (recipe.data.files or {}).items():
        inputs.append((f"{value!r} (data.files.{split})", Path(value)))
    return inputs


def _why_not_here(target: Path, recipe: Recipe | None, recipe_file: str | Path | None) -> str | None:
    try:
        home = Path.home().resolve()
    except RuntimeError:  # no $HOME and no password entry
        home = None
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        return "is the root folder"
    if home is not None and target == home:
        return "is your home folder"
    if home is not None and home.is_relative_to(target):
        return f"contains your home folder {str(home)!r}"
    if target == cwd:
        return "is the current folder"
    if cwd.is_relative_to(target):
        return f"contains the current folder {str(cwd)!r}"
    for label, path in _recipe_inputs(recipe, recipe_file):
        resolved = path.expanduser().resolve()
        if resolved == target / "recipe.yaml" and (read_marker(target, RUN) or _written_before_markers(target)):
            continue  # a run's own resolved recipe, rerun in place: the run wrote it and writes it again
        if resolved.is_relative_to(target):
            return f"contains {label}"
    return None


def check_output_location(
    path: Path,
    recipe: Recipe | None = None,
    recipe_file: str | Path | None = None,
    *,
    what: str = "training.output_dir",
) -> None:
    """Refuse `/`, the home folder, the current folder and its ancestors, and any folder holding the recipe file, its
    local model or its data: no flag makes these a run's folder."""
    reason = _why_not_here(path.resolve(), recipe, recipe_file)  # where the run writes: no ~ expansion there
    if reason:
        raise OutputDirError(
            f"{what} {str(path)!r} {reason}; hf_transfer writes into a folder of its own: name a new one, "
            "e.g. outputs/my-run (--output-dir)"
        )


def _check_writable(path: Path) -> None:
    """Without creating anything: the folder, or the nearest existing folder above it, must be writable."""
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        reason = "Not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = "Permission denied"
    else:
        return
    raise OutputDirError(f"training.output_dir {str(path)!r} is not writable: {reason}")


def _written_before_markers(path: Path) -> bool:
    """A run folder of an hf_transfer from before folder markers: its run.json says who produced it."""
    try:
        return read_json(path / "run.json").get("produced_by") == "hf_transfer"
    except (OSError, ValueError, AttributeError):
        return False


def _check_contents(path: Path, *, overwrite: bool, resume: bool) -> None:
    """A fresh or empty folder is free; a marked run folder needs --overwrite or --resume; anything else is refused."""
    names = [n for n in _entries(path) if n != marker_path(path, RUN).name]
    if not names:  # nothing, or only the marker of a run that ended before writing anything
        if resume:
            raise OutputDirError(f"--resume: {str(path)!r} holds no earlier run to resume")
        return
    marker = read_marker(path, RUN)
    if resume:
        if marker is None and not (path / "checkpoints").is_dir():
            raise OutputDirError(f"--resume: {str(path)!r} holds no hf_transfer run to resume (no checkpoints/)")
        return  # resuming deletes nothing; the checkpoint's recipe is checked when it is restored
    recorded = set((marker or {}).get("files", []))
    foreign = [n for n in names if marker is None or not is_run_file(path, n, recorded)]
    if not foreign:
        if overwrite:
            return
        raise OutputDirError(
            f"training.output_dir {str(path)!r} already holds files; pass --overwrite to replace them, "
            "--resume to continue that run, or choose another folder (--output-dir)"
        )
    if marker is None and _written_before_markers(path):
        raise OutputDirError(
            f"training.output_dir {str(path)!r} holds a run of an hf_transfer older than its folder marker "
            f"({marker_path(path, RUN).name}), so --overwrite deletes nothing there: empty the folder yourself, "
            "or choose another folder (--output-dir)"
        )
    raise OutputDirError(
        f"training.output_dir {str(path)!r} holds files hf_transfer did not write (first: {foreign[0]!r}); nothing "
        "was deleted: choose another folder (--output-dir), or move them away"
    )


def claim_output_dir(path: Path, recipe: Recipe | None = None, *, overwrite: bool, resume: bool) -> None:
    """Before anything loads, on every process, creating nothing: may this run write into `path`? Never overwrite
    silently: a run folder of hf_transfer's needs --overwrite or --resume; a folder with anyone else's files, or one
    of the places `check_output_location` refuses, is never written into. `take_output_dir` checks again."""
    if overwrite and resume:
        raise OutputDirError(
            f"--overwrite and --resume together: --resume continues the run in {str(path)!r}, --overwrite replaces "
            "it; pass one of them"
        )
    check_output_location(path, recipe)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"training.output_dir {str(path)!r} is a file, not a folder")
    _check_writable(path)
    holder = _lock_holder(path)
    if holder is not None:
        raise _in_use(path, holder)
    _check_contents(path, overwrite=overwrite, resume=resume)


# -- clearing --------------------------------------------------------------------------------------------------------


def clear_output_dir(path: Path, *, is_main: bool) -> None:
    """--overwrite: delete what an earlier run of hf_transfer wrote in its marked folder, and nothing else (the lock
    file of the run holding the folder and the marker stay); the folder itself stays."""
    marker = read_marker(path, RUN)
    if not is_main or marker is None:
        return  # a folder hf_transfer cannot tell it wrote is never cleared
    recorded = set(marker.get("files", []))
    for child in sorted(path.iterdir()):
        if child.name in (LOCK_FILE, marker_path(path, RUN).name) or not is_run_file(path, child.name, recorded):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    write_marker(path, RUN)  # the next run records its own files


# -- the run lock ----------------------------------------------------------------------------------------------------


@dataclass
class OutputLock:
    """The main process's hold on an output folder for one run."""

    folder: Path
    handle: IO[str] | None
    created: bool = False
    wrote_marker: bool = False
    before: frozenset[str] = field(default_factory=frozenset)

    def release(self, *, failed: bool) -> None:
        """Unlock; a run that failed before writing anything takes back the marker (and the folder it created)."""
        marker = marker_path(self.folder, RUN)
        if failed and self.wrote_marker and _entries(self.folder) == [marker.name]:
            marker.unlink()
        if self.handle is not None:
            # Unlinked while still locked: a run waiting on this file then finds it gone and makes a new one.
            (self.folder / LOCK_FILE).unlink(missing_ok=True)
            self.handle.close()
        if failed and self.created:
            try:
                self.folder.rmdir()
            except OSError:  # not empty: the run wrote something, or another run moved in
                pass


_HELD: list[OutputLock] = []


def _in_use(path: Path, holder: str) -> OutputDirError:
    by = f" (pid {holder})" if holder else ""
    return OutputDirError(
        f"training.output_dir {str(path)!r} is in use by another hf_transfer run{by}; wait for it to end, or choose "
        "another folder (--output-dir)"
    )


def _lock_holder(folder: Path) -> str | None:
    """The pid written by the run that holds `folder`'s lock ('' if it has not written it yet), or None if free."""
    lock_path = folder / LOCK_FILE
    if fcntl is None or not lock_path.is_file():
        return None
    try:
        with open(lock_path, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip()
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def _acquire(folder: Path) -> IO[str] | None:
    """Lock `folder` for this process, non-blocking, or raise naming the run that holds it."""
    if fcntl is None:
        logger.warning("no flock on this platform: two runs into %s at once would not be stopped", folder)
        return None
    lock_path = folder / LOCK_FILE
    while True:
        handle = open(lock_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise _in_use(folder, holder) from None
        except OSError as error:  # a filesystem without locks
            handle.close()
            logger.warning("cannot lock %s (%s): two runs into it at once would not be stopped", folder, error)
            return None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # the run before us unlinked this file after we opened it: lock the new one
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _take(path: Path, *, overwrite: bool, resume: bool) -> OutputLock:
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputDirError(f"training.output_dir {str(path)!r} is not writable: {error.strerror}") from None
    lock = OutputLock(path, _acquire(path), created=created)
    try:
        _check_contents(path, overwrite=overwrite, resume=resume)  # again: the folder may have changed meanwhile
        if read_marker(path, RUN) is None and not resume:  # a fresh folder (checked empty): the marker goes first
            write_marker(path, RUN)
            lock.wrote_marker = True
        if overwrite:
            clear_output_dir(path, is_main=True)
    except BaseException:
        lock.release(failed=True)
        raise
    lock.before = frozenset(_entries(path))
    return lock


def take_output_dir(path: Path, accelerator: Accelerator, *, overwrite: bool, resume: bool) -> None:
    """Once the recipe, data and model have loaded: create the folder, lock it for this run (main process only),
    check it again, mark a fresh one and clear it for --overwrite. Every process raises the same error, together."""
    message = None
    if accelerator.is_main_process:
        try:
            _HELD.append(_take(path, overwrite=overwrite, resume=resume))
        except (OutputDirError, OSError) as error:  # raised on every process below, not on the main one alone
            message = str(error)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([message])[0]  # the other processes wait here for the main one
    if message:
        raise OutputDirError(message)


def record_output_files(path: Path) -> None:
    """After the run wrote its folder: add the names it created there to the marker (what --overwrite may delete)."""
    lock = next((held for held in _HELD if held.folder == path), None)
    marker = read_marker(path, RUN)
    if lock is None or marker is None:
        return  # another process's run, or a resumed run of an older hf_transfer (left unmarked)
    written = set(_entries(path)) - lock.before
    write_marker(path, RUN, set(marker.get("files", [])) | written)


def releasing_output_locks(run: Callable[P, R]) -> Callable[P, R]:
    """Decorate a run: every output lock taken inside it is released when it returns or raises."""

    @functools.wraps(run)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        depth, failed = len(_HELD), True
        try:
            result = run(*args, **kwargs)
            failed = False
            return result
        finally:
            while len(_HELD) > depth:
                _HELD.pop().release(failed=failed)

    return guarded


# -- reports (compare, advise) ---------------------------------------------------------------------------------------


def check_report_files(folder: Path, names: Iterable[str], kind: str, *, replace_own: bool) -> None:
    """Creating nothing: a report file already in `folder` is replaced only if this kind of report wrote it (its
    marker names it), and then only with `replace_own`."""
    own = set((read_marker(folder, kind) or {}).get("files", []))
    for name in names:
        if not (folder / name).exists():
            continue
        if name not in own:
            raise OutputDirError(
                f"{str(folder / name)!r} was not written by hf-transfer {kind}, so it is not replaced: move it away "
                "or choose another folder (--output-dir)"
            )
        if not replace_own:
            raise OutputDirError(
                f"{str(folder)!r} holds an earlier {kind} report ({name}); pass --overwrite to replace it, or choose "
                "another folder (--output-dir)"
            )


def claim_report_files(folder: Path, names: Iterable[str], kind: str, *, replace_own: bool) -> None:
    """Just before writing the report: check again, then write the marker naming its files, first."""
    names = list(names)
    check_report_files(folder, names, kind, replace_own=replace_own)
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, kind, set((read_marker(folder, kind) or {}).get("files", [])) | set(names))
