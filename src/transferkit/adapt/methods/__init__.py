"""The adaptation methods, one module each; importing this package registers them."""

from . import adabn, coral, dann, self_training, source_only  # noqa: F401
