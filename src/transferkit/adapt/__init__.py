"""Domain adaptation: adapt a model trained on a labelled source to an unlabelled target domain."""

from ..config import AdaptConfig  # noqa: F401  (re-exported)
from .base import METHODS, Adaptation, Method, hide_labels, parse_methods, register_method
from .run import AdaptResult, AdaptRow, adapt, fit_adapted

__all__ = ["AdaptConfig", "Adaptation", "Method", "METHODS", "parse_methods", "register_method", "adapt", "fit_adapted",
           "AdaptResult", "AdaptRow", "list_methods", "hide_labels"]


def list_methods() -> dict[str, str]:
    """Registered adaptation methods and their descriptions."""
    parse_methods("source-only")  # imports the methods
    return {n: METHODS.get(n).description for n in METHODS.names()}
