"""User-facing errors: one clear line naming the file/column/option and the fix."""

from __future__ import annotations


class TransferkitError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``str(err)`` as a single line and exits with ``exit_code``;
    no traceback unless ``--debug``.
    """

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(f"{message} Fix: {fix}" if fix else message)


class DataError(TransferkitError):
    """Bad data: empty folder, unreadable file, missing column, single class..."""


class ConfigError(TransferkitError):
    """Bad option: unknown backbone, unknown strategy, invalid value."""


class ModelLoadError(TransferkitError):
    """A saved model folder that cannot be loaded."""
