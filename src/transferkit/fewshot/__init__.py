"""Few-shot learning: prototypes of a support set (no training), episodic evaluation, and
episodic meta-training of the backbone on base classes."""

from .episodes import EpisodeResult, EpisodeSampler, evaluate_episodes, fewshot_eval
from .meta import meta_train
from .text_head import text_fewshot_model
from .prototypes import METRICS, classify, predict, prototype_model, prototypes, resolve_backbone, scores, transform

__all__ = [
    "EpisodeResult", "meta_train", "text_fewshot_model", "EpisodeSampler", "evaluate_episodes", "fewshot_eval", "METRICS", "classify", "predict",
    "prototype_model", "prototypes", "resolve_backbone", "scores", "transform",
]
