"""Transfer strategies, one module each, registered by name."""

from . import finetune, linear_probe, lora, multitask, scratch, stack  # noqa: F401  (registration side effects)
from .base import STRATEGIES, Strategy, register_strategy


def get_strategy(name: str) -> Strategy:
    return STRATEGIES.get(name)()


def list_strategies() -> list[dict[str, str]]:
    return [{"name": n, "description": cls.description} for n, cls in STRATEGIES.items()]


__all__ = ["STRATEGIES", "Strategy", "register_strategy", "get_strategy", "list_strategies"]
