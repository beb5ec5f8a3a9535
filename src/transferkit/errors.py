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


class StorageError(TransferkitError):
    """The disk is full (or not writable) where transferkit has to write: nothing half-written is left."""

    exit_code = 74  # EX_IOERR


class Preempted(BaseException):
    """SIGTERM/SIGINT: the run stopped cleanly (a checkpoint or the model was written first, when there was one).

    A ``BaseException`` (as ``KeyboardInterrupt``): code that catches ``Exception`` to report a bad
    file or model must not swallow a stop request."""

    exit_code = 75  # EX_TEMPFAIL: run again (with --resume when a checkpoint was written)

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(f"{message} Fix: {fix}" if fix else message)
