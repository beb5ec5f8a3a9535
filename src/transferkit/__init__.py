"""transferkit: transfer learning for images and text.

    import transferkit as tk
    result = tk.fit("data/", backbone="efficientnet_lite0", strategy="finetune", out="runs/emoji")
    model = tk.load("runs/emoji")
    model.predict(["cat.jpg"])
"""

__version__ = "0.1.0"

from .api import FitResult, compare, evaluate, fit  # noqa: E402
from .api import load_model_dir as load  # noqa: E402
from .backbones import create_backbone, list_backbones  # noqa: E402
from .config import FitConfig  # noqa: E402
from .data import TaskData, load_data, split_data  # noqa: E402
from .errors import TransferkitError  # noqa: E402
from .fewshot import fewshot_eval  # noqa: E402
from .model import TransferModel  # noqa: E402
from .strategies import list_strategies, register_strategy  # noqa: E402
from .transferability import rank  # noqa: E402

__all__ = [
    "__version__", "fit", "compare", "evaluate", "load", "FitResult", "FitConfig", "TransferModel",
    "TaskData", "load_data", "split_data", "create_backbone", "list_backbones", "list_strategies",
    "register_strategy", "TransferkitError", "fewshot_eval", "rank",
]
