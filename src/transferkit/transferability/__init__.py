"""Transferability scores: estimate, without fine-tuning, how well features (or a
source classifier's predictions) suit a labelled target task. All are "higher is
better"; see :func:`compute_scores`."""

from .base import SCORES, ScoreSpec, check_inputs, compute_scores
from .empirical import knn_accuracy, linear_cv
from .hscore import hscore
from .logme import logme
from .rank import RankReport, RankRow, rank
from .source import leep, nce

__all__ = [
    "SCORES",
    "ScoreSpec",
    "check_inputs",
    "compute_scores",
    "hscore",
    "knn_accuracy",
    "leep",
    "linear_cv",
    "logme",
    "nce",
    "rank",
    "RankReport",
    "RankRow",
]
