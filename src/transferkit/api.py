"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import FitConfig, check_int
from .data.dataset import TaskData, load_data, split_data, warn_empty_class_folders
from .data.validate import screen, validate_command
from .metrics import primary_metric
from .model import TransferModel
from .strategies import get_strategy


@dataclass
class FitResult:
    model: TransferModel
    metrics: dict[str, dict[str, Any]]  # split name -> metrics
    seconds: float
    run_dir: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    main: bool = True  # False on the other processes of a distributed run (they evaluate and save nothing)


def _as_data(data, loader_kw: dict[str, Any], label_names: list[str] | None = None, keep_bad_samples: bool = False) -> TaskData:
    if isinstance(data, TaskData):
        return data
    return load_data(data, label_names=label_names, keep_bad_samples=keep_bad_samples, **loader_kw)


def screen_splits(
    train: TaskData, val: TaskData | None, test: TaskData | None, cfg: FitConfig
) -> tuple[TaskData, TaskData | None, TaskData | None]:
    """Apply ``cfg.on_bad_sample`` to each set before training: stop at the first unusable sample,
    or leave them out (listed in each set's ``skipped``). Already screened sets are kept as they are;
    a set left empty becomes None."""
    command = validate_command(train.source, val.source if val is not None else None, test.source if test is not None else None)
    train = screen(train, "train", cfg.on_bad_sample, cfg.max_bad_fraction, command)
    val = screen(val, "val", cfg.on_bad_sample, cfg.max_bad_fraction, command) if val is not None else None
    test = screen(test, "test", cfg.on_bad_sample, cfg.max_bad_fraction, command) if test is not None else None
    return train, (val if val is not None and len(val) else None), (test if test is not None and len(test) else None)


def skipped_samples(*parts: TaskData | None) -> dict[str, Any]:
    """``{"count": n, "files": [...]}``: the unusable samples left out of these sets."""
    files = [x for part in parts if part is not None for x in (part.skipped or [])]
    return {"count": len(files), "files": files}


def prepare_splits(
    data, val_data=None, test_data=None, cfg: FitConfig | None = None, **loader_kw: Any
) -> tuple[TaskData, TaskData | None, TaskData | None]:
    """Load data, apply ``cfg.on_bad_sample`` (before any training work), then split it stratified
    with ``cfg.split_seed`` where val/test sets are not given. Samples left out are listed in the
    sets' ``skipped`` (those of ``data`` in the train set's)."""
    from .data.formats import dataset_splits

    cfg = cfg or FitConfig()
    data, val_data, test_data = dataset_splits(data, val_data, test_data)  # a DatasetDict: its train/validation/test splits
    full = _as_data(data, loader_kw, keep_bad_samples=True)
    warn_empty_class_folders(full)
    names = full.label_names if full.task != "regression" else None
    val = _as_data(val_data, loader_kw, names, True) if val_data is not None else None
    test = _as_data(test_data, loader_kw, names, True) if test_data is not None else None
    full, val, test = screen_splits(full, val, test, cfg)
    val_frac = 0.0 if val is not None else cfg.val_fraction
    test_frac = 0.0 if test is not None else cfg.test_fraction
    if val_frac or test_frac:
        train, v, t = split_data(full, val=val_frac, test=test_frac, seed=cfg.split_seed)
        val = val if val is not None else v
        test = test if test is not None else t
        train.skipped = list(full.skipped or [])
    else:
        train = full
    return train, (val if val is not None and len(val) else None), (test if test is not None and len(test) else None)


def fit(
    data,
    *,
    val_data=None,
    test_data=None,
    out: str | Path | None = None,
    overwrite: bool = False,
    config: FitConfig | str | Path | None = None,
    progress: bool = True,
    loader: dict[str, Any] | None = None,
    splits: tuple[TaskData, TaskData | None, TaskData | None] | None = None,
    resume: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    **overrides: Any,
) -> FitResult:
    """Train a transferred model.

    ``data``: an image folder, a CSV/TSV/JSONL manifest, a Parquet/Arrow file, a Hugging Face
    ``datasets`` folder or object, a pandas DataFrame, a list of (input, label) pairs or a
    ``TaskData``; split stratified into train/val/test unless ``val_data``/``test_data`` are given
    (or the data is a DatasetDict with validation/test splits). ``config``: a ``FitConfig`` or a
    JSON/YAML file of its fields (``FitConfig.from_file``: also a run's report.json). ``overrides``
    are ``FitConfig`` fields (``backbone="minilm"``, ``strategy="linear-probe"``, ``epochs=5``...).
    With ``out``, the run folder gets ``run.json``, ``metrics.jsonl``, ``report.json`` and the model
    under ``out/model``; it must be new or empty, or hold an earlier run that ``overwrite=True``
    replaces (never anything else), and it is locked while the run works in it.

    ``resume=RUN_DIR`` continues an interrupted run from its newest checkpoint, with the run's own
    options unless ``config``/``overrides`` change them (a different model or task is refused,
    other changes are warned about).

    SIGTERM/SIGINT stop the run with ``Preempted`` (exit code 75): before training with nothing
    written; during training after a checkpoint; after training once the model is saved.

    ``callbacks``: your own ``transferkit.training.Callback`` objects, called by the training loop
    next to its own (strategies fitted in closed form, such as the default linear probe, have no
    loop and do not call them).
    """
    from .errors import ConfigError, Preempted
    from .training.preemption import StopSignal
    from .training.rundir import RunFolder, check_run_target
    from .training.runtime import main_process

    config = FitConfig.from_file(config) if isinstance(config, (str, Path)) else config
    if resume is not None:
        from .training import checkpoint

        if out is not None and Path(out) != Path(resume):
            raise ConfigError(f"--out {out} differs from --resume {resume}.", "a resumed run continues in its own folder; drop --out.")
        check_run_target(resume, resume=True)
        out = resume
        saved = checkpoint.load(Path(resume)).state["config"]
        config = config or FitConfig.from_dict(saved)
    cfg = (config or FitConfig()).replace(**overrides) if overrides else (config or FitConfig())
    strategy = get_strategy(cfg.strategy)  # unknown names fail before any work
    run_dir = Path(out) if out is not None else None
    writer = run_dir is not None and main_process()  # with several processes only the first writes
    if writer:
        check_run_target(run_dir, resume=resume is not None, overwrite=overwrite)  # before any work
    folder = RunFolder(run_dir, resume=resume is not None, overwrite=overwrite) if writer else contextlib.nullcontext()
    with StopSignal() as stop, folder:
        if splits is not None:  # sets built by the caller are screened too (no-op when prepare_splits made them)
            splits = screen_splits(*splits, cfg)
        train, val, test = splits or prepare_splits(data, val_data, test_data, cfg, **(loader or {}))
        t0 = time.perf_counter()
        model = strategy.fit(train, val, cfg, run_dir=run_dir, progress=progress, resume=resume is not None, callbacks=callbacks)
        seconds = time.perf_counter() - t0
        if not main_process():  # the first process evaluates and saves
            return FitResult(model, {}, seconds, run_dir, model.info.get("history", []), main=False)
        stop.defer()  # training is over: a signal from now on lets the model be saved first
        metrics: dict[str, dict[str, Any]] = {}
        not_evaluated = []
        for name, part in (("val", val), ("test", test)):
            if part is None:
                continue
            if stop.signal is not None:
                not_evaluated.append(name)
                continue
            metrics[name] = model.evaluate(part, batch_size=cfg.eval_batch_size, device=cfg.device)
        model.info.update({
            "metrics": metrics,
            "fit_config": cfg.to_dict(),
            "train_seconds": round(seconds, 2),
            "data": {"source": train.source, "n_train": len(train), "n_val": len(val or []), "n_test": len(test or [])},
            "skipped_samples": skipped_samples(train, val, test),
        })
        history = model.info.get("history", [])
        if run_dir is not None:
            from ._io import atomic_write_json
            from .training.rundir import storage_errors

            folder.begin()
            model.save(run_dir / "model", overwrite=True)  # the run folder is ours (checked and locked above)
            with storage_errors(run_dir / "report.json"):
                atomic_write_json(run_dir / "report.json", {k: v for k, v in model.info.items() if k != "history"})
        if stop.signal is not None:
            where = f"the model was saved to {run_dir / 'model'}" if run_dir is not None else "nothing was saved (no --out)"
            missing = f"; {' and '.join(not_evaluated)} metrics were not computed" if not_evaluated else ""
            raise Preempted(f"Stopped by signal {stop.signal} after training; {where}{missing}.",
                            "compute them with: transferkit evaluate MODEL_DIR DATA" if run_dir is not None else "pass --out to keep the model.")
    return FitResult(model, metrics, seconds, run_dir, history)


def evaluate(model: TransferModel | str | Path, data, batch_size: int = 64, device: str = "auto", **loader_kw: Any) -> dict[str, Any]:
    """Metrics of a model (or saved model folder) on labelled data, labels mapped by name."""
    if not isinstance(model, TransferModel):
        model = load_model_dir(model)
    loaded = _as_data(data, {"task": model.task, **loader_kw}, model.label_names if model.task != "regression" else None)
    return model.evaluate(loaded, batch_size=batch_size, device=device)


def load_model_dir(path: str | Path) -> TransferModel:
    """Load ``path`` or, for a run folder, ``path/model``."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        path = path / "model"
    return TransferModel.load(path)


@dataclass
class CompareRow:
    strategy: str
    scores: list[float]
    macro_f1: list[float]
    seconds: list[float]
    errors: list[float] = field(default_factory=list)  # standard error of each seed's score on the test set, when known

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else 0.0


@dataclass
class Comparison:
    rows: list[CompareRow]
    metric: str
    baseline: str
    n_test: int
    models: dict[str, TransferModel] = field(default_factory=dict)  # best seed per strategy
    higher: bool = True  # whether a higher ``metric`` is better (False for MSE)

    def gain(self, strategy: str) -> float:
        """How much better than the baseline (positive = better, whichever way the metric points)."""
        diff = self.row(strategy).mean - self.row(self.baseline).mean
        return diff if self.higher else -diff

    def noise(self, strategy: str) -> float:
        """Seed noise of the difference; with one seed, the test-set standard error of each score
        (binomial for accuracy)."""
        a, b = self.row(strategy), self.row(self.baseline)
        if len(a.scores) > 1 and len(b.scores) > 1:
            return math.sqrt(a.std**2 / len(a.scores) + b.std**2 / len(b.scores))

        def se(r: CompareRow) -> float:
            if r.errors:
                return float(np.mean(r.errors))
            p = r.mean
            return math.sqrt(max(p * (1 - p), 1e-12) / max(1, self.n_test))

        return math.sqrt(se(a) ** 2 + se(b) ** 2)

    def negative_transfer(self, strategy: str) -> bool:
        """True when the pretrained strategy is not better than scratch beyond twice the noise."""
        return self.gain(strategy) <= 2 * self.noise(strategy)

    def row(self, strategy: str) -> CompareRow:
        return next(r for r in self.rows if r.strategy == strategy)

    def best(self) -> str:
        pick = max if self.higher else min
        return pick(self.rows, key=lambda r: r.mean).strategy

    def to_dict(self) -> dict[str, Any]:
        out = {"metric": self.metric, "higher_is_better": self.higher, "baseline": self.baseline, "n_test": self.n_test,
               "best": self.best(), "rows": []}
        for r in self.rows:
            row = {"strategy": r.strategy, "mean": r.mean, "std": r.std, "scores": r.scores, "macro_f1": float(np.mean(r.macro_f1)), "seconds": float(np.mean(r.seconds))}
            if r.strategy != self.baseline:
                row.update(gain=self.gain(r.strategy), noise=self.noise(r.strategy), negative_transfer=self.negative_transfer(r.strategy))
            out["rows"].append(row)
        return out


def compare(
    data,
    *,
    strategies: Sequence[str] = ("finetune",),
    baseline: str = "scratch",
    seeds: int = 1,
    val_data=None,
    test_data=None,
    config: FitConfig | str | Path | None = None,
    strategy_overrides: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
    loader: dict[str, Any] | None = None,
    on_result=None,
    splits: tuple[TaskData, TaskData | None, TaskData | None] | None = None,
    **overrides: Any,
) -> Comparison:
    """Train each strategy and the scratch baseline on the same split, over ``seeds`` seeds, and
    report the transfer gain on the test set (flagging negative transfer)."""
    config = FitConfig.from_file(config) if isinstance(config, (str, Path)) else config
    cfg = (config or FitConfig()).replace(**overrides) if overrides else (config or FitConfig())
    check_int(seeds, "--seeds", 1, 1000)
    names = list(dict.fromkeys([*strategies, baseline]))
    for n in names:
        get_strategy(n)
    if splits is not None:  # screened once here, not again by each fit
        splits = screen_splits(*splits, cfg)
    train, val, test = splits or prepare_splits(data, val_data, test_data, cfg, **(loader or {}))
    evaluated = test if test is not None else val
    if evaluated is None:
        from .errors import DataError

        raise DataError("compare needs a test or validation set.", "pass --test-data or keep --test-fraction above 0.")
    metric, higher = primary_metric(train.task)
    rows, models = [], {}
    for name in names:
        row = CompareRow(name, [], [], [])
        best = None
        for s in range(seeds):
            scfg = cfg.replace(strategy=name, seed=cfg.seed + s, **(strategy_overrides or {}).get(name, {}))
            res = fit(None, config=scfg, splits=(train, val, test), progress=progress)
            m = res.metrics["test" if test is not None else "val"]
            row.scores.append(m[metric])
            if f"{metric}_se" in m:
                row.errors.append(m[f"{metric}_se"])
            row.macro_f1.append(m.get("macro_f1", float("nan")))
            row.seconds.append(res.seconds)
            if best is None or (m[metric] > best[0] if higher else m[metric] < best[0]):
                best = (m[metric], res.model)
            if on_result is not None:
                on_result(name, s, res)
        models[name] = best[1]
        rows.append(row)
    return Comparison(rows, metric, baseline, len(evaluated), models, higher)
