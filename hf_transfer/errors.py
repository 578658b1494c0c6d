"""Every user-facing error class, at the bottom of the import graph: the CLI prints these as one clear line."""

from __future__ import annotations


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file, the key path, the value and what is allowed."""


class SourceError(RuntimeError):
    """Nothing could serve a model or dataset; the message lists what was tried and how to fix it."""


class DataError(ValueError):
    """Data that does not fit the recipe; the message names the file or split, the row and the column."""


class StrategyError(ValueError):
    """A strategy setting that does not fit the model; the message names the recipe key."""


class OutputDirError(RuntimeError):
    """The output folder cannot be used without losing existing results."""


class ResumeError(RuntimeError):
    """No usable checkpoint, or one written by a different recipe."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a misconfigured launch); the message says where and why."""


class PublishError(RuntimeError):
    """A push that could not be done; the message says why and what to do, and never contains a token."""


class ExportError(RuntimeError):
    """A model that cannot be exported to ONNX, or an ONNX export that no longer matches the folder's weights."""


def one_line(error: BaseException, limit: int = 200) -> str:
    """An exception as one line for a log or a record: its type and the first line of its message, cut at `limit`."""
    message = str(error)
    return f"{type(error).__name__}: {message.splitlines()[0][:limit] if message else ''}"


USER_ERRORS: tuple[type[Exception], ...] = (
    RecipeError,
    SourceError,
    DataError,
    StrategyError,
    OutputDirError,
    ResumeError,
    TrainingError,
    PublishError,
    ExportError,
    FileNotFoundError,
)
