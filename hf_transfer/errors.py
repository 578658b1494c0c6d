"""The user-facing error classes: the CLI prints these as one clear line instead of a traceback."""

from __future__ import annotations

from .checkpoints import ResumeError
from .data import DataError
from .outputs import OutputDirError
from .recipe import RecipeError
from .sources import SourceError
from .strategies import StrategyError
from .train import TrainingError

USER_ERRORS: tuple[type[Exception], ...] = (
    RecipeError,
    SourceError,
    DataError,
    StrategyError,
    OutputDirError,
    ResumeError,
    TrainingError,
    FileNotFoundError,
)
try:
    from .hub import PublishError

    USER_ERRORS += (PublishError,)
except ImportError:  # pragma: no cover - hub.py always ships; guard keeps the CLI usable mid-refactor
    pass
