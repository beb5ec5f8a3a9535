"""``transferkit adapt``: train on a labelled source, adapt to an unlabelled target, report honestly.

Protocol: the target set passed for adaptation is only ever read as inputs; model selection uses
the source validation set or a label-free score on the target (``--select``: SND by default); a
labelled target test set, when given, is used once per trained model, for the final report, where
source-only and the adapted models are shown side by side on it (mean and spread over seeds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import AdaptConfig, FitConfig, check_int
from ..data.dataset import PLURAL, TaskData, load_data, load_unlabelled
from ..data.validate import screen, validate_command
from ..training import seed_everything, train
from ..errors import DataError
from ..model import TransferModel
from ..strategies.base import make_backbone, new_model
from .base import METHODS, Adaptation, parse_methods, resolve_method
from .callback import AdaptationLoss, DomainAdaptation


def fit_adapted(train_data: TaskData, val: TaskData | None, target: TaskData, cfg: FitConfig, acfg: AdaptConfig,
                *, progress: bool = True) -> TransferModel:
    """Train one model with ``acfg.method`` (fine-tuning from the pretrained backbone) and return it
    after the methods' final steps (e.g. AdaBN). ``target`` is only read as inputs."""
    seed_everything(cfg.seed)
    backbone = make_backbone(cfg, pretrained=True)
    acfg = acfg.replace(method=resolve_method(acfg.method, backbone))
    names = parse_methods(acfg.method)
    model = new_model(backbone, train_data, cfg, f"adapt:{acfg.method}")
    methods = [METHODS.get(n)(acfg) for n in names]
    ada = Adaptation(methods, target, acfg, cfg) if names != ["source-only"] else None
    if ada is not None and acfg.select == "source-val" and val is None:
        from ..errors import ConfigError

        raise ConfigError("--select source-val needs a source validation set.", "keep --val-fraction above 0 or use --select snd.")
    hooks = dict(callbacks=[DomainAdaptation(ada)], loss_terms=[AdaptationLoss(ada)]) if ada is not None else {}
    history = train(model, train_data, val, cfg, progress=progress, **hooks)
    info: dict[str, Any] = {"method": acfg.method, "adapt_config": acfg.to_dict(), "selection": acfg.select if ada else "source-val"}
    if ada is not None:
        ada.finalize(model)
        for m in methods:
            if hasattr(m, "summary"):
                info["pseudo_labels"] = m.summary()
                model._pseudo_rounds = m.rounds  # indices and labels, for reports with target labels
    model.info.update({"history": history, "adaptation": info})
    return model.cpu().eval()


def check_target(source: TaskData, target: TaskData, what: str = "target") -> None:
    if len(target) == 0:
        raise DataError(f"The {what} set is empty.", "pass a folder or manifest with at least one input.")
    if target.modality != source.modality:
        raise DataError(f"The source holds {PLURAL[source.modality]} but the {what} holds {PLURAL[target.modality]}.",
                        "adapt between data of the same kind (images to images, texts to texts).")
    extra = sorted(set(target.label_names) - set(source.label_names))
    if extra:
        raise DataError(f"The {what} has labels the source does not have: {', '.join(extra[:5])}{'...' if len(extra) > 5 else ''}.",
                        "adapt between tasks with the same label set (rename or drop those classes).")


@dataclass
class AdaptRow:
    method: str
    target: list[float] = field(default_factory=list)  # accuracy on the target test set, per seed
    target_f1: list[float] = field(default_factory=list)
    source: list[float] = field(default_factory=list)  # accuracy on the source test split, per seed
    seconds: list[float] = field(default_factory=list)
    pseudo_accuracy: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method, "seconds": float(np.mean(self.seconds))}
        for k in ("target", "target_f1", "source", "pseudo_accuracy"):
            v = getattr(self, k)
            if v:
                d[k] = v
                d[f"{k}_mean"] = float(np.mean(v))
                d[f"{k}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        return d


@dataclass
class AdaptResult:
    model: TransferModel  # the adapted model of the first seed
    rows: list[AdaptRow]
    report: dict[str, Any]
    run_dir: Path | None = None


def adapt(
    source,
    target,
    *,
    target_test=None,
    config: FitConfig | str | Path | None = None,
    adapt_config: AdaptConfig | None = None,
    seeds: int = 1,
    baseline: bool = True,
    diagnostics: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    loader: dict[str, Any] | None = None,
    target_labels_for_report: np.ndarray | None = None,
    **overrides: Any,
) -> AdaptResult:
    """Adapt a model trained on the labelled ``source`` to the unlabelled ``target``.

    ``source``: labelled data in any form ``fit`` takes (split into train/val/test by ``config``).
    ``target``: inputs only (a folder, a manifest with or without labels, or a ``TaskData`` whose
    targets are never read). ``target_test``: labelled target data, used only for the final report.
    ``overrides``: ``AdaptConfig`` fields (``method=``, ``select=``...) and ``FitConfig`` fields.
    ``config`` may be a JSON/YAML file of both kinds of fields (or a saved run's report.json).
    ``target_labels_for_report``: labels of ``target`` in its order, to report the accuracy of the
    pseudo-labels (read after training only).

    ``out``: a run folder (new, empty, or an earlier run replaced with ``overwrite=True``; locked
    while the run works) for the adapted model and ``report.json``.
    """
    kw = dict(target_test=target_test, config=config, adapt_config=adapt_config, seeds=seeds, baseline=baseline,
              diagnostics=diagnostics, progress=progress, loader=loader, target_labels_for_report=target_labels_for_report)
    if out is None:
        return _adapt(source, target, folder=None, **kw, **overrides)
    from ..training.rundir import RunFolder

    with RunFolder(out, overwrite=overwrite) as folder:
        return _adapt(source, target, folder=folder, **kw, **overrides)


def _adapt(source, target, *, target_test, config, adapt_config, seeds, baseline, diagnostics, folder, progress, loader,
           target_labels_for_report, **overrides: Any) -> AdaptResult:
    from ..api import prepare_splits

    if isinstance(config, (str, Path)):  # one JSON/YAML file (or saved run) for both configs
        from ..config import read_config_file

        parts = read_config_file(config, (FitConfig, AdaptConfig))
        config, adapt_config = FitConfig(**parts[FitConfig]), adapt_config or AdaptConfig(**parts[AdaptConfig])
    a_keys = set(AdaptConfig.__dataclass_fields__)
    acfg = (adapt_config or AdaptConfig()).replace(**{k: v for k, v in overrides.items() if k in a_keys})
    fit_over = {k: v for k, v in overrides.items() if k not in a_keys}
    cfg = (config or FitConfig()).replace(**fit_over) if fit_over else (config or FitConfig())
    names = parse_methods(acfg.method)
    check_int(seeds, "--seeds", 1, 1000)
    loader = dict(loader or {})
    train_data, val, test = prepare_splits(source, None, None, cfg, **loader)
    if train_data.task != "classification":
        raise DataError("Domain adaptation supports single-label classification.", "pass a classification task.")
    if not isinstance(target, TaskData):
        target = load_unlabelled(target, text_column=loader.get("text_column"), path_column=loader.get("path_column"),
                                 keep_bad_samples=True)
    check_target(train_data, target)
    # every target input is checked (--on-bad-sample) before any training, not when adaptation reaches it
    target = screen(target, "target", cfg.on_bad_sample, cfg.max_bad_fraction, validate_command(target.source))
    if target.skipped and target_labels_for_report is not None:  # rows left out: the labels no longer line up
        import warnings

        warnings.warn("pseudo-label accuracy is not reported: unusable target samples were left out.", stacklevel=2)
        target_labels_for_report = None
    tgt_test = None
    if target_test is not None:
        tgt_test = target_test if isinstance(target_test, TaskData) else load_data(
            target_test, label_names=train_data.label_names, keep_bad_samples=True, **loader)
        check_target(train_data, tgt_test, "target test")
        tgt_test = screen(tgt_test, "target test", cfg.on_bad_sample, cfg.max_bad_fraction, validate_command(tgt_test.source))
    if acfg.method == "auto":
        acfg = acfg.replace(method=resolve_method("auto", make_backbone(cfg, pretrained=False)))
        names = parse_methods(acfg.method)
    methods = ([] if names == ["source-only"] or not baseline else ["source-only"]) + [acfg.method]
    rows, first_models, t_all = [], {}, time.perf_counter()
    for method in methods:
        row = AdaptRow(method)
        for s in range(seeds):
            t0 = time.perf_counter()
            model = fit_adapted(train_data, val, target, cfg.replace(seed=cfg.seed + s), acfg.replace(method=method), progress=progress)
            row.seconds.append(time.perf_counter() - t0)
            if tgt_test is not None:
                m = model.evaluate(tgt_test, batch_size=cfg.eval_batch_size, device=cfg.device)
                row.target.append(m["accuracy"])
                row.target_f1.append(m["macro_f1"])
            if test is not None:
                row.source.append(model.evaluate(test, batch_size=cfg.eval_batch_size, device=cfg.device)["accuracy"])
            rounds = getattr(model, "_pseudo_rounds", None)
            if target_labels_for_report is not None and rounds:
                last = rounds[-1]
                y = np.asarray(target_labels_for_report)[last["indices"]]
                row.pseudo_accuracy.append(float((y == np.asarray(last["labels"])).mean()) if len(y) else float("nan"))
            first_models.setdefault(method, model)
        rows.append(row)
    report: dict[str, Any] = {
        "source": train_data.source, "target": target.source, "target_test": tgt_test.source if tgt_test is not None else None,
        "n_source_train": len(train_data), "n_source_val": len(val or []), "n_target": len(target),
        "n_target_test": len(tgt_test or []), "seeds": seeds, "selection": acfg.select, "fit_config": cfg.to_dict(),
        "adapt_config": acfg.to_dict(), "rows": [r.to_dict() for r in rows], "seconds": round(time.perf_counter() - t_all, 1),
        "protocol": "target labels unused for training and model selection; target test used only for this report",
    }
    adapted = first_models[acfg.method]
    if diagnostics:
        report["proxy_a_distance"] = domain_gap(train_data, target, cfg, {m: first_models[m] for m in methods})
    adapted.info.update({"adaptation_report": {k: v for k, v in report.items() if k != "fit_config"}, "fit_config": cfg.to_dict()})
    run_dir = folder.path if folder is not None else None
    if folder is not None:
        from .._io import atomic_write_json
        from ..training.rundir import storage_errors

        folder.begin()
        adapted.save(run_dir / "model", overwrite=True)
        with storage_errors(run_dir / "report.json"):
            atomic_write_json(run_dir / "report.json", report)
    return AdaptResult(adapted, rows, report, run_dir)


def domain_gap(source: TaskData, target: TaskData, cfg: FitConfig, models: dict[str, TransferModel], max_samples: int = 1000) -> dict[str, float]:
    """Proxy A-distance between source-train and target features: of the pretrained backbone, and of
    each trained model's backbone (features as deployed)."""
    from ..features import compute_features
    from .diagnostics import proxy_a_distance

    rng = np.random.default_rng(0)
    s_in = [source.inputs[i] for i in rng.permutation(len(source))[:max_samples]]
    t_in = [target.inputs[i] for i in rng.permutation(len(target))[:max_samples]]
    out: dict[str, float] = {}
    backbones = {"pretrained": make_backbone(cfg, pretrained=True)} | {k: m.backbone for k, m in models.items()}
    for name, bb in backbones.items():
        fs = compute_features(bb, s_in, cfg.eval_batch_size, cfg.device).numpy()
        ft = compute_features(bb, t_in, cfg.eval_batch_size, cfg.device).numpy()
        out[name] = round(proxy_a_distance(fs, ft), 4)
    return out
