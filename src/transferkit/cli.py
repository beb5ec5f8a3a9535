"""Command line: a thin layer over the Python API (same names as ``FitConfig`` and ``transferkit.*``)."""

from __future__ import annotations

import functools
import inspect
import json
import sys
import typing
import warnings
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import AdaptConfig, FitConfig
from .errors import Preempted, TransferkitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="transferkit: transfer learning for images, text and audio. Run 'transferkit quickstart' to see it work.",
)
out = Console()
err = Console(stderr=True)
_STATE = {"debug": False}

_HELP = {
    "backbone": "backbone: efficientnet_lite0, minilm, crepe_tiny, speaker_ge2e, timm/<arch>, hf/<name>, audio/<name> or a local folder ('transferkit models')",
    "audio_window": "audio: window length in seconds (default: the weights' own; training crops it at random positions)",
    "audio_eval": "audio, prediction: center (one centre window per clip) | sliding (windows every half window, features averaged)",
    "strategy": "linear-probe | finetune | scratch ('transferkit strategies')",
    "backbone_weights": "local .safetensors weights for a timm/<arch> backbone (offline)",
    "layer": "cut the backbone after this layer and train on its pooled features ('transferkit rank --layers' names them)",
    "image_size": "input size in pixels (default: the weights' own)",
    "compile": "torch.compile the backbone for training (pays off on long GPU runs; the first steps compile)",
    "backbones": "stack: comma-separated backbones to combine, a cut layer as NAME@LAYER (e.g. minilm,minilm@encoder.layer.3)",
    "stack": "stack: concat (one head on the members' normalised features side by side) | oof (per-member probes + "
             "a meta-learner on their out-of-fold probabilities)",
    "stack_folds": "stack: cross-validation folds for out-of-fold predictions and for choosing C without a validation set",
    "head": "linear-probe head: logistic | linear | mlp; finetune head: linear | mlp",
    "freeze": "keep the first N layer groups frozen (layer-wise fine-tuning)",
    "unfreeze": "none | gradual (head first, then one more group per --unfreeze-every epochs)",
    "lr": "head learning rate; the top backbone group gets lr * backbone-lr-ratio",
    "patience": "early stopping: epochs without improvement of the selection score",
    "mt_weighting": "multitask: uncertainty (learned task weights, Kendall et al. 2018) | fixed (--mt-weights)",
    "mt_weights": "multitask, fixed weighting: NAME=W,... (default 1 per task)",
    "lora_r": "lora: rank of the adapters",
    "lora_alpha": "lora: scaling; adapter updates are multiplied by alpha / r",
    "lora_dropout": "lora: dropout on the adapters' input",
    "lora_targets": "lora: regular expression over layer names to adapt (default: attention query/value for text "
                    "models, pointwise 1x1 convolutions and linear layers for timm)",
    "method": "adaptation method(s): source-only | adabn | dann | coral | self-training, combined with '+' ('transferkit adapt-methods')",
    "select": "model selection without target labels: snd (target soft-neighbourhood density) | source-val | last",
    "adapt_weight": "weight of the DANN / CORAL loss",
    "threshold": "self-training: confidence above which a target pseudo-label is always taken",
    "class_fraction": "self-training: at least this top fraction of each predicted class gets a pseudo-label",
    "pseudo_start": "self-training: fraction of the epochs trained on the source before pseudo-labels start",
}


def _config_options(func=None, *, extra: type | None = None, extra_arg: str = "acfg"):
    """Add every ``FitConfig`` field as a ``--option`` and pass a validated ``cfg`` to ``func``, and
    ``explicit``: the config options given on the command line or in ``--config FILE`` (a resumed
    run keeps the others). With ``extra`` (another config dataclass), its fields become options too
    and it is passed as ``extra_arg``. ``--config`` (JSON/YAML, or a saved run's report.json) fills
    in the options not given on the command line."""
    if func is None:
        return lambda f: _config_options(f, extra=extra, extra_arg=extra_arg)
    sig = inspect.signature(func)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    params += [p for p in sig.parameters.values() if p.name not in ("cfg", "explicit", extra_arg)]
    owners: dict[str, type] = {}
    for cls in (FitConfig, extra) if extra is not None else (FitConfig,):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            default = f.default if f.default is not MISSING else None
            ann = hints[f.name]
            if ann in (str | None, typing.Optional[str]):
                ann = Optional[str]
            elif ann in (int | None, typing.Optional[int]):
                ann = Optional[int]
            params.append(inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(default, help=_HELP.get(f.name, "")), annotation=ann))
            owners[f.name] = cls
    params.append(inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
        None, "--config", help="JSON/YAML file of these options (or a run's report.json); options given here override it")))

    @functools.wraps(func)
    def wrapper(ctx: typer.Context, *args, config_file: Optional[Path] = None, **kwargs):
        from .config import read_config_file

        source = ctx.get_parameter_source
        given = {k for k in owners if source(k) is not None and source(k).name == "COMMANDLINE"}
        from_file = read_config_file(config_file, tuple(dict.fromkeys(owners.values()))) if config_file is not None else {}
        for values in from_file.values():
            kwargs.update({k: v for k, v in values.items() if k not in given})
            given |= set(values)
        cfg_kw = {k: kwargs.pop(k) for k in list(kwargs) if owners.get(k) is FitConfig}
        extra_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in owners}
        explicit = {k: v for k, v in cfg_kw.items() if k in given}
        more = {"explicit": explicit} if "explicit" in sig.parameters else {}
        if extra is not None:
            more[extra_arg] = extra(**extra_kw)
        return func(*args, cfg=FitConfig(**cfg_kw), **more, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)
    return wrapper


def _loader(label_column, text_column, path_column, task, tasks: str | None = None) -> dict[str, Any]:
    kw = {"label_column": label_column, "text_column": text_column, "path_column": path_column, "task": task}
    return {**kw, "tasks": tasks} if tasks else kw


LabelColumn = typer.Option(None, help="label column of a CSV/TSV/JSONL manifest (default: label)")
TextColumn = typer.Option(None, help="text column of a manifest (default: text)")
PathColumn = typer.Option(None, help="image path column of a manifest (default: image/path)")
Task = typer.Option("classification", help="classification | multilabel | regression")


def _metrics_table(title: str, metrics: dict[str, dict[str, Any]]) -> Table:
    table = Table(title=title)
    table.add_column("split")
    # a multi-task model: one row per split and task
    rows = [(f"{s} {t}", tm) for s, sm in metrics.items() for t, tm in sm.get("tasks", {}).items()] or list(metrics.items())
    keys = [k for k in ("accuracy", "macro_f1", "micro_f1", "mse", "mae", "r2", "n") if any(k in m for _, m in rows)]
    for k in keys:
        table.add_column(k, justify="right")
    for split, m in rows:
        table.add_row(split, *[f"{m[k]:.4f}" if isinstance(m.get(k), float) else str(m.get(k, "")) for k in keys])
    return table


@app.command()
@_config_options
def fit(
    data: Path = typer.Argument(..., help="image folder (one subfolder per class), CSV/TSV/JSONL manifest, Parquet/Arrow file or Hugging Face datasets folder"),
    out_dir: Path = typer.Option(Path("transferkit-run"), "--out", help="run folder; the model is saved in OUT/model"),
    val_data: Optional[Path] = typer.Option(None, help="validation set (default: split from DATA)"),
    test_data: Optional[Path] = typer.Option(None, help="test set (default: split from DATA)"),
    label_column: Optional[str] = LabelColumn,
    text_column: Optional[str] = TextColumn,
    path_column: Optional[str] = PathColumn,
    task: str = Task,
    tasks: Optional[str] = typer.Option(None, help="multi-task: label columns, e.g. category,subcategory or name:regression (with --strategy multitask)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    resume: Optional[Path] = typer.Option(None, help="continue an interrupted run from RUN_DIR's newest checkpoint "
                                          "(its own options; those given here override them)"),
    overwrite: bool = typer.Option(False, help="replace an earlier run in --out (never a folder transferkit did not write)"),
    cfg: FitConfig = None,
    explicit: dict = None,
):
    """Train a model on DATA with a transfer strategy and save it.

    Exit codes: 0 done, 2 bad input or option, 3 training failed (e.g. non-finite loss), 74 disk
    full, 75 stopped by SIGTERM/SIGINT (during training after writing a checkpoint: continue with
    --resume RUN_DIR; after training once the model is saved)."""
    from .api import fit as api_fit

    loader = _loader(label_column, text_column, path_column, task, tasks)
    if resume is not None:
        out_dir = resume
        res = api_fit(data, val_data=val_data, test_data=test_data, resume=resume, progress=progress, loader=loader, **explicit)
    else:
        res = api_fit(data, val_data=val_data, test_data=test_data, out=out_dir, overwrite=overwrite, config=cfg, progress=progress,
                      loader=loader)
    if not res.main:  # another process of a distributed run: the first one reports
        return
    cfg = FitConfig.from_dict(res.model.info["fit_config"])
    _warn_skipped(res.model.info.get("skipped_samples"), data, out_dir / "report.json")
    out.print(_metrics_table(f"{cfg.strategy} on {cfg.backbones or cfg.backbone} ({res.seconds:.1f} s)", res.metrics))
    out.print(f"Model saved to {out_dir / 'model'}. Predict with: transferkit predict {out_dir / 'model'} INPUTS...")


@app.command()
def predict(
    model_dir: Path = typer.Argument(..., help="saved model folder (or run folder)"),
    inputs: List[str] = typer.Argument(..., help="image files/folders, a .txt file of lines, or texts"),
    support: Optional[Path] = typer.Option(None, help="labelled support set: classify into its classes by nearest prototype of this model's features"),
    as_json: bool = typer.Option(False, "--json", help="print JSON lines"),
    top_k: int = typer.Option(3, help="probabilities shown per input"),
    batch_size: int = typer.Option(64),
    device: str = typer.Option("auto"),
):
    """Predict labels and probabilities for images or texts."""
    from .api import load_model_dir
    from .config import check_int

    check_int(batch_size, "--batch-size", 1)  # before loading anything
    check_int(top_k, "--top-k", 1)
    model = load_model_dir(model_dir)
    items, kind = _inputs_for(model.modality, inputs)
    _print_predictions(model.predict(items, batch_size=batch_size, top_k=top_k, device=device, support=support), kind, top_k, as_json)


def _inputs_for(modality: str, inputs: list[str]) -> tuple[list[str], str]:
    from .data.dataset import load_inputs
    from .errors import DataError

    items, kind = load_inputs(inputs)
    if kind != modality:
        raise DataError(f"The model takes {modality} inputs but got {kind}s.", f"pass {modality} inputs.")
    return items, kind


def _print_predictions(results: list[dict[str, Any]], kind: str, top_k: int, as_json: bool) -> None:
    if as_json:
        for r in results:
            print(json.dumps(r))
        return
    table = Table()
    table.add_column("input", overflow="fold")
    table.add_column("prediction")
    table.add_column("probabilities")
    # a multi-task model: one row per input and task
    results = [{**tr, "input": f"{r['input']} [{t}]"} for r in results for t, tr in r["tasks"].items()] if results and "tasks" in results[0] else results
    for r in results:
        if "value" in r:  # regression
            pred = f"{r['value']:.4g}"
        elif "labels" in r:  # multilabel: possibly no label above 0.5
            pred = ", ".join(r["labels"]) or "(none)"
        else:
            pred = r["label"]
        probs = ", ".join(f"{k} {v:.3f}" for k, v in list(r.get("probabilities", {}).items())[:top_k])
        x = r["input"]  # a long path keeps its file name, a long text its beginning
        shown = x if len(x) <= 60 else ("…" + x[-59:] if kind != "text" else x[:59] + "…")
        table.add_row(shown, str(pred), probs)
    out.print(table)


@app.command()
def evaluate(
    model_dir: Path = typer.Argument(..., help="saved model folder (or run folder)"),
    data: Path = typer.Argument(..., help="labelled data in any form 'fit' accepts"),
    label_column: Optional[str] = LabelColumn,
    text_column: Optional[str] = TextColumn,
    path_column: Optional[str] = PathColumn,
    as_json: bool = typer.Option(False, "--json"),
    device: str = typer.Option("auto"),
):
    """Accuracy, macro-F1, per-class precision/recall and the confusion matrix on labelled data."""
    from .api import evaluate as api_evaluate, load_model_dir

    model = load_model_dir(model_dir)
    m = api_evaluate(model, data, device=device, label_column=label_column, text_column=text_column, path_column=path_column)
    if as_json:
        print(json.dumps(m))
        return
    out.print(_metrics_table(f"{model_dir}", {"data": m}))
    if "per_class" in m:
        t = Table(title="per class")
        for c in ("class", "precision", "recall", "f1", "support"):
            t.add_column(c)
        for name, v in m["per_class"].items():
            t.add_row(name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
        out.print(t)
        cm = Table(title="confusion matrix (rows: true, columns: predicted)")
        cm.add_column("")
        for i, _ in enumerate(model.label_names):
            cm.add_column(str(i), justify="right")
        for i, (name, row) in enumerate(zip(model.label_names, m["confusion_matrix"])):
            cm.add_row(f"{i} {name}", *[str(v) for v in row])
        out.print(cm)


def _warn_skipped(skipped: dict[str, Any] | None, data: Path, report: Path) -> None:
    """One warning line on stderr when ``--on-bad-sample skip`` left samples out."""
    from rich.markup import escape

    if skipped and skipped.get("count"):
        n, files = skipped["count"], skipped["files"]
        err.print(f"[yellow]warning:[/yellow] left out {n} unusable sample{'s' if n > 1 else ''} ({escape(files[0])}"
                  f"{', ...' if n > 1 else ''}); all listed under skipped_samples in {escape(str(report))}; see also: transferkit validate {escape(str(data))}",
                  highlight=False, soft_wrap=True)


@app.command()
def validate(
    data: Path = typer.Argument(..., help="training data in any form 'fit' accepts"),
    val_data: Optional[Path] = typer.Option(None, help="validation set"),
    test_data: Optional[Path] = typer.Option(None, help="test set"),
    label_column: Optional[str] = LabelColumn,
    text_column: Optional[str] = TextColumn,
    path_column: Optional[str] = PathColumn,
    task: str = Task,
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
):
    """List every problem in the data: unreadable, truncated or empty images, empty texts, missing
    files, classes missing from train, duplicates. Exit code 1 when there are errors (warnings pass)."""
    from rich.markup import escape

    from .data.dataset import load_data
    from .data.formats import dataset_splits
    from .data.validate import validate_data

    kw = dict(_loader(label_column, text_column, path_column, task), keep_bad_samples=True)
    data, val_data, test_data = dataset_splits(data, val_data, test_data)
    train = load_data(data, **kw)
    # val/test keep their own label names: classes unknown to train are listed, not raised
    val = load_data(val_data, min_classes=1, **kw) if val_data is not None else None
    test = load_data(test_data, min_classes=1, **kw) if test_data is not None else None
    report = validate_data(train, val, test)
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        if report.problems:
            table = Table(title=f"problems in {escape(str(data))}")
            for c in ("level", "kind", "split", "file or text", "message"):
                table.add_column(c, overflow="fold")
            for p in report.problems:
                where = p.path_or_text if p.index is None else f"{p.path_or_text} (#{p.index})"
                table.add_row(p.severity, p.kind, p.split, escape(where), escape(p.message))
            out.print(table)
        out.print(report.summary() + ("" if report.ok else " Fix the errors (fit --on-bad-sample skip leaves unusable samples out)."),
                  highlight=False)
    if not report.ok:
        raise typer.Exit(1)


def comparison_table(cmp, title: str) -> Table:
    t = Table(title=title)
    for c in ("strategy", cmp.metric, "macro-F1", "time (s)", "gain vs scratch", "verdict"):
        t.add_column(c, justify="right" if c not in ("strategy", "verdict") else "left")
    for r in cmp.to_dict()["rows"]:
        spread = f" ± {r['std']:.3f}" if len(r["scores"]) > 1 else ""
        gain = f"{r['gain']:+.3f} (noise {r['noise']:.3f})" if "gain" in r else "baseline"
        verdict = "" if "gain" not in r else ("NEGATIVE TRANSFER: not clearly better than scratch" if r["negative_transfer"] else "transfer helps")
        f1 = f"{r['macro_f1']:.3f}" if r["macro_f1"] == r["macro_f1"] else "-"  # NaN for regression
        t.add_row(r["strategy"], f"{r['mean']:.3f}{spread}", f1, f"{r['seconds']:.1f}", gain, verdict)
    return t


@app.command()
@_config_options
def compare(
    data: Path = typer.Argument(..., help="labelled data in any form 'fit' accepts"),
    strategies: str = typer.Option("finetune", help="comma-separated strategies compared with scratch"),
    seeds: int = typer.Option(1, help="training seeds per strategy (same split)"),
    val_data: Optional[Path] = typer.Option(None),
    test_data: Optional[Path] = typer.Option(None),
    label_column: Optional[str] = LabelColumn,
    text_column: Optional[str] = TextColumn,
    path_column: Optional[str] = PathColumn,
    task: str = Task,
    as_json: bool = typer.Option(False, "--json"),
    progress: bool = typer.Option(True),
    cfg: FitConfig = None,
):
    """Train strategies and the scratch baseline on the same split; print the transfer gain."""
    from .api import compare as api_compare

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    cmp = api_compare(data, strategies=names, seeds=seeds, val_data=val_data, test_data=test_data, config=cfg,
                      progress=progress, loader=_loader(label_column, text_column, path_column, task))
    if as_json:
        print(json.dumps(cmp.to_dict()))
    else:
        out.print(comparison_table(cmp, f"transfer vs scratch on {cfg.backbone} (test n={cmp.n_test})"))


def adaptation_table(report: dict[str, Any], title: str) -> Table:
    t = Table(title=title)
    for c in ("method", "target acc", "target macro-F1", "source acc", "pseudo-label acc", "time (s)"):
        t.add_column(c, justify="left" if c == "method" else "right")

    def cell(r, k, digits=3):
        if f"{k}_mean" not in r:
            return "-"
        spread = f" ± {r[f'{k}_std']:.{digits}f}" if len(r[k]) > 1 else ""
        return f"{r[f'{k}_mean']:.{digits}f}{spread}"

    for r in report["rows"]:
        t.add_row(r["method"], cell(r, "target"), cell(r, "target_f1"), cell(r, "source"), cell(r, "pseudo_accuracy"), f"{r['seconds']:.1f}")
    return t


@app.command()
@_config_options(extra=AdaptConfig)
def adapt(
    source: Path = typer.Option(..., help="labelled source data (image folder or manifest), split into train/val/test"),
    target: Path = typer.Option(..., help="unlabelled target data: image folder, manifest (labels not read) or .txt of texts"),
    target_test: Optional[Path] = typer.Option(None, help="labelled target test set: used only for the final report"),
    seeds: int = typer.Option(1, help="training seeds (the report shows mean and spread)"),
    baseline: bool = typer.Option(True, help="also train source-only and report it side by side"),
    diagnostics: bool = typer.Option(True, help="proxy A-distance before and after adaptation"),
    out_dir: Path = typer.Option(Path("transferkit-adapt"), "--out", help="run folder; the adapted model is saved in OUT/model"),
    overwrite: bool = typer.Option(False, help="replace an earlier run in --out (never a folder transferkit did not write)"),
    label_column: Optional[str] = LabelColumn,
    text_column: Optional[str] = TextColumn,
    path_column: Optional[str] = PathColumn,
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    cfg: FitConfig = None,
    acfg: AdaptConfig = None,
):
    """Adapt a model trained on labelled SOURCE data to unlabelled TARGET data (domain shift).

    Target labels are never used for training or model selection; --target-test is read only for
    the final table, where source-only and the adapted model are compared on it."""
    from .adapt import adapt as api_adapt

    loader = _loader(label_column, text_column, path_column, "classification")
    res = api_adapt(source, target, target_test=target_test, config=cfg, adapt_config=acfg, seeds=seeds, baseline=baseline,
                    diagnostics=diagnostics, out=out_dir, overwrite=overwrite, progress=progress, loader=loader)
    if as_json:
        print(json.dumps(res.report))
        return
    out.print(adaptation_table(res.report, f"{acfg.method} on {cfg.backbone}, selection: {acfg.select} (no target labels)"))
    if "proxy_a_distance" in res.report:
        out.print("proxy A-distance (0 = domains indistinguishable, 2 = separable): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in res.report["proxy_a_distance"].items()), highlight=False)
    out.print(f"Model saved to {out_dir / 'model'}. Predict with: transferkit predict {out_dir / 'model'} INPUTS...")


@app.command("adapt-methods")
def adapt_methods():
    """List domain-adaptation methods."""
    from .adapt import list_methods

    t = Table(title="adaptation methods (combine with '+')")
    t.add_column("name")
    t.add_column("description")
    for name, desc in list_methods().items():
        t.add_row(name, desc)
    out.print(t)


@app.command("fewshot-eval")
def fewshot_eval(
    data: Path = typer.Argument(..., help="labelled data (image folder or manifest): the classes episodes are drawn from"),
    query_data: Optional[Path] = typer.Option(None, help="the same items in another domain (same rows and labels): queries come from here"),
    backbone: str = typer.Option("efficientnet_lite0", help=_HELP["backbone"]),
    backbone_weights: Optional[str] = typer.Option(None, help=_HELP["backbone_weights"]),
    image_size: Optional[int] = typer.Option(None, help=_HELP["image_size"]),
    ways: int = typer.Option(5, help="classes per episode (N-way)"),
    shots: str = typer.Option("1,5", help="support examples per class (K-shot), comma-separated"),
    queries: int = typer.Option(15, help="query examples per class and episode"),
    episodes: int = typer.Option(600, help="episodes per setting (fixed seed)"),
    seed: int = typer.Option(0),
    metric: str = typer.Option("cosine", help="cosine | euclidean (features centred and L2-normalised)"),
    device: str = typer.Option("auto"),
    label_column: Optional[str] = LabelColumn,
    text_column: Optional[str] = TextColumn,
    path_column: Optional[str] = PathColumn,
    as_json: bool = typer.Option(False, "--json"),
):
    """Few-shot accuracy of a frozen backbone's class prototypes over N-way K-shot episodes (mean and 95% CI)."""
    from .errors import ConfigError
    from .fewshot import fewshot_eval as api

    try:
        ks = tuple(int(k) for k in shots.split(",") if k.strip())
    except ValueError:
        raise ConfigError(f"Invalid --shots {shots!r}.", "pass whole numbers separated by commas, e.g. 1,5.") from None
    results = api(data, backbone=backbone, query_data=query_data, ways=ways, shots=ks, queries=queries, episodes=episodes, seed=seed,
                  metric=metric, image_size=image_size, backbone_weights=backbone_weights, device=device,
                  loader=_loader(label_column, text_column, path_column, "classification"), progress=not as_json)
    if as_json:
        print(json.dumps([r.to_dict() for r in results]))
        return
    t = Table(title=f"few-shot prototypes on {backbone} ({metric}, {episodes} episodes, seed {seed})")
    for c in ("setting", "accuracy", "95% CI"):
        t.add_column(c, justify="right")
    for r in results:
        t.add_row(f"{r.n_way}-way {r.k_shot}-shot", f"{r.mean:.3f}", f"± {r.ci95:.3f}")
    out.print(t)


def _check_save(save: Optional[Path], overwrite: bool) -> None:
    """A --save path that cannot be used is refused before any work."""
    if save is not None:
        from .training.rundir import check_model_target

        check_model_target(save, overwrite=overwrite)


def _predict_and_save(model, inputs: list[str], save: Optional[Path], top_k: int, as_json: bool, device: str, what: str,
                      overwrite: bool = False) -> None:
    """Predict ``inputs`` with a freshly built model, then save it (only after the inputs worked)."""
    items, kind = _inputs_for(model.modality, inputs)
    results = model.predict(items, top_k=top_k, device=device)
    if save is not None:
        model.save(save, overwrite=overwrite)
    _print_predictions(results, kind, top_k, as_json)
    if save is not None and not as_json:
        out.print(f"{what} model ({len(model.label_names)} classes) saved to {save}.")


@app.command()
def fewshot(
    queries: List[str] = typer.Argument(..., help="inputs to classify: image files/folders, a .txt file of lines, or texts"),
    support: Path = typer.Option(..., help="labelled support set (class folders or manifest), at least one example per class"),
    model_dir: Optional[Path] = typer.Option(None, "--model", help="saved model whose backbone embeds (e.g. from 'transferkit meta-train')"),
    backbone: str = typer.Option("efficientnet_lite0", help=_HELP["backbone"] + "; ignored with --model"),
    backbone_weights: Optional[str] = typer.Option(None, help=_HELP["backbone_weights"]),
    image_size: Optional[int] = typer.Option(None, help=_HELP["image_size"]),
    metric: str = typer.Option("cosine", help="cosine | euclidean (features centred on the support mean and L2-normalised)"),
    save: Optional[Path] = typer.Option(None, help="save the few-shot model (prototypes) here; add classes later with add_support"),
    overwrite: bool = typer.Option(False, help="replace an existing model at --save (never a folder that is not a transferkit model)"),
    label_column: Optional[str] = LabelColumn,
    text_column: Optional[str] = TextColumn,
    path_column: Optional[str] = PathColumn,
    as_json: bool = typer.Option(False, "--json", help="print JSON lines"),
    top_k: int = typer.Option(3, help="probabilities shown per input"),
    device: str = typer.Option("auto"),
):
    """Classify QUERIES into the classes of a small labelled support set by nearest class prototype (no training)."""
    from .api import load_model_dir
    from .config import check_image_size, check_int

    from .fewshot import prototype_model

    check_int(top_k, "--top-k", 1)
    check_image_size(image_size)
    _check_save(save, overwrite)
    bb = load_model_dir(model_dir) if model_dir is not None else backbone
    model = prototype_model(support, backbone=bb, metric=metric, image_size=image_size, backbone_weights=backbone_weights,
                            device=device, loader=_loader(label_column, text_column, path_column, "classification"))
    _predict_and_save(model, queries, save, top_k, as_json, device, "Few-shot", overwrite)


@app.command("meta-train")
def meta_train(
    data: Path = typer.Argument(..., help="labelled base classes (class folders or manifest); novel classes must not be among them"),
    save: Path = typer.Option(..., help="where the meta-trained model is saved (use it as 'fewshot --model')"),
    overwrite: bool = typer.Option(False, help="replace an existing model at --save (never a folder that is not a transferkit model)"),
    backbone: str = typer.Option("efficientnet_lite0", help=_HELP["backbone"]),
    backbone_weights: Optional[str] = typer.Option(None, help=_HELP["backbone_weights"]),
    image_size: Optional[int] = typer.Option(None, help=_HELP["image_size"]),
    ways: int = typer.Option(5, help="classes per training episode"),
    shots: int = typer.Option(5, help="support examples per class and episode"),
    queries: int = typer.Option(5, help="query examples per class and episode"),
    episodes: int = typer.Option(2000, help="training episodes"),
    lr: float = typer.Option(3e-5, help="AdamW learning rate (cosine schedule, warm-up)"),
    weight_decay: float = typer.Option(0.05),
    train_last: Optional[int] = typer.Option(None, help="train only the last N layer groups (default: all)"),
    metric: str = typer.Option("cosine", help="cosine (learned temperature) | euclidean"),
    augment: bool = typer.Option(True, help="random resized crops and flips on images"),
    seed: int = typer.Option(0),
    label_column: Optional[str] = LabelColumn,
    text_column: Optional[str] = TextColumn,
    path_column: Optional[str] = PathColumn,
    device: str = typer.Option("auto"),
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """Episodic prototypical-network training of the backbone on base classes ("learning to learn")."""
    from .fewshot import meta_train as api

    _check_save(save, overwrite)
    model = api(data, backbone=backbone, ways=ways, shots=shots, queries=queries, episodes=episodes, lr=lr, weight_decay=weight_decay,
                metric=metric, train_last=train_last, augment=augment, seed=seed, image_size=image_size,
                backbone_weights=backbone_weights, device=device, loader=_loader(label_column, text_column, path_column, "classification"),
                progress=progress)
    model.save(save, overwrite=overwrite)
    last = model.info["meta_training"]["history"][-1]
    out.print(f"Meta-trained {episodes} episodes in {model.info['meta_training']['seconds']} s (last training episodes: "
              f"loss {last['loss']:.3f}, accuracy {last['accuracy']:.3f}). Saved to {save}; "
              f"use it with: transferkit fewshot --model {save} --support SUPPORT QUERIES...")


@app.command()
def zeroshot(
    inputs: List[str] = typer.Argument(..., help="inputs to classify: image files/folders, a .txt file of lines, or texts"),
    labels: Optional[str] = typer.Option(None, help='candidate labels, comma-separated: "cat,dog"'),
    labels_file: Optional[Path] = typer.Option(None, help="one label per line, optionally 'name: description' (or a CSV with label,description)"),
    backbone: str = typer.Option("minilm", help="text encoder (minilm, hf/<name>), image-text model (clip/<name>), or any image backbone with --seen"),
    template: Optional[List[str]] = typer.Option(None, help="prompt template with {} for the label; repeat to ensemble (default: '{}' for text, photo/drawing/icon prompts for CLIP)"),
    seen: Optional[Path] = typer.Option(None, help="labelled data of seen classes: learn a map from image features to the class vectors"),
    attributes: Optional[Path] = typer.Option(None, help="CSV 'class,attr1,...' giving the class vectors for --seen (default: --text-encoder embeddings of the labels)"),
    text_encoder: str = typer.Option("minilm", help="with --seen: the encoder of label names/descriptions"),
    calibration: str = typer.Option("auto", help="with --seen and seen classes among the labels: lowered seen-class scores (cosine units), or auto"),
    backbone_weights: Optional[str] = typer.Option(None, help=_HELP["backbone_weights"]),
    image_size: Optional[int] = typer.Option(None, help=_HELP["image_size"]),
    save: Optional[Path] = typer.Option(None, help="save the zero-shot model here (it loads like any model)"),
    overwrite: bool = typer.Option(False, help="replace an existing model at --save (never a folder that is not a transferkit model)"),
    label_column: Optional[str] = LabelColumn,
    text_column: Optional[str] = TextColumn,
    path_column: Optional[str] = PathColumn,
    as_json: bool = typer.Option(False, "--json", help="print JSON lines"),
    top_k: int = typer.Option(3, help="probabilities shown per input"),
    device: str = typer.Option("auto"),
):
    """Classify INPUTS into classes known only by their names, descriptions or attributes."""
    from .config import check_image_size, check_int
    from .zeroshot import zeroshot_model

    check_int(top_k, "--top-k", 1)
    check_image_size(image_size)
    _check_save(save, overwrite)
    model = zeroshot_model(labels, labels_file=labels_file, backbone=backbone, templates=template or None, seen=seen,
                           attributes=attributes, text_encoder=text_encoder, calibration=calibration, image_size=image_size,
                           backbone_weights=backbone_weights, device=device,
                           loader=_loader(label_column, text_column, path_column, "classification"))
    _predict_and_save(model, inputs, save, top_k, as_json, device, "Zero-shot", overwrite)


def rank_table(report) -> Table:
    names = [n for n in ("logme", "hscore", "nce", "leep", "knn", "linear_cv") if any(n in r.scores for r in report.rows)]
    t = Table(title=f"transferability on {report.n_scored} of {report.n_samples} samples, {report.n_classes} classes "
                    f"(mean rank over {', '.join(report.aggregate_over) or 'no common score'})")
    for c in ("#", "candidate", "dim", *names, "mean rank", "time (s)"):
        t.add_column(c, justify="left" if c == "candidate" else "right")
    for i, r in enumerate(report.rows, 1):
        cells = [f"{r.scores[n]:.3f}" if n in r.scores else "-" for n in names]
        mean = f"{r.mean_rank:.2f}" if r.mean_rank is not None else "-"
        t.add_row(str(i), r.label, str(r.dim), *cells, mean, f"{r.seconds:.1f}")
    return t


@app.command()
def rank(
    data: Path = typer.Option(..., help="labelled data in any form 'fit' accepts"),
    backbones: str = typer.Option(..., help="comma-separated candidates, e.g. efficientnet_lite0,efficientnet_lite2"),
    layers: Optional[str] = typer.Option(None, help="'all' (every layer of each backbone: where to cut) or comma-separated layer names"),
    scratch: bool = typer.Option(True, help="score each backbone randomly initialised too, and warn of negative transfer"),
    scores: Optional[str] = typer.Option(None, help="comma-separated scores (default all): logme, hscore, nce, leep, knn, linear_cv"),
    max_samples: Optional[int] = typer.Option(5000, help="score at most this many samples (stratified); 0: all"),
    image_size: Optional[int] = typer.Option(None, help="input size in pixels (default: the weights' own)"),
    audio_window: Optional[float] = typer.Option(None, help=_HELP["audio_window"]),
    batch_size: int = typer.Option(128),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
    save: Optional[Path] = typer.Option(None, help="write the report as JSON"),
    label_column: Optional[str] = LabelColumn,
    text_column: Optional[str] = TextColumn,
    path_column: Optional[str] = PathColumn,
    as_json: bool = typer.Option(False, "--json"),
    progress: bool = typer.Option(True),
):
    """Rank pretrained backbones (or their layers) for DATA from frozen features, before any fine-tuning."""
    from .transferability import rank as api_rank

    split = (lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None)
    report = api_rank(data, split(backbones), layers="all" if layers == "all" else split(layers), scratch=scratch,
                      scores=split(scores), max_samples=max_samples or None, seed=seed, image_size=image_size,
                      batch_size=batch_size, device=device, progress=progress, audio_window=audio_window,
                      loader=_loader(label_column, text_column, path_column, "classification"))
    if save is not None:
        report.save(save)
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    out.print(rank_table(report))
    for w in report.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    rec = report.recommendation
    out.print(f"recommended: {rec['backbone']} at {rec['layer']}, strategy {rec['strategy']} ({rec['reason']}).")
    out.print(f"  {rec['command']}")


@app.command()
def models():
    """List backbones; offline ones work with no network."""
    from .backbones import list_backbones

    t = Table(title="backbones")
    for c in ("name", "modality", "available offline", "licence", "description"):
        t.add_column(c)
    for r in list_backbones():
        t.add_row(r["name"], r["modality"], "yes" if r["offline"] else "no (hub)", r["licence"], r["description"])
    out.print(t)


@app.command()
def strategies():
    """List transfer strategies."""
    from .strategies import list_strategies

    t = Table(title="strategies")
    t.add_column("name")
    t.add_column("description")
    for r in list_strategies():
        t.add_row(r["name"], r["description"])
    out.print(t)


@app.command()
def quickstart(
    out_dir: Path = typer.Option(Path("transferkit-quickstart"), "--out", help="where the best model is saved"),
    image_size: Optional[int] = typer.Option(None, help="default: 96 on CPU, 224 on GPU"),
    epochs: Optional[int] = typer.Option(None, help="default: 12 on CPU, 15 on GPU"),
    device: str = typer.Option("auto"),
    progress: bool = typer.Option(True),
):
    """Train linear-probe, fine-tune and scratch on the embedded emoji dataset; save the best model."""
    from .quickstart import run

    run(out_dir, image_size=image_size, epochs=epochs, device=device, progress=progress, console=out)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show full tracebacks")):
    _STATE["debug"] = debug


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return "warning: " + " ".join(str(message).split()) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one line and exit non-zero (traceback with --debug)."""
    from rich.markup import escape  # messages hold paths and lists: "[...]" must not be read as markup

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    before = warnings.formatwarning
    if not debug:  # a warning is one line, "warning: ...", not a source location and a line of code
        warnings.formatwarning = _one_line_warning
    try:
        rc = app(args=argv, prog_name="transferkit", standalone_mode=False)  # typer.Exit(n) in a command returns n
    except (TransferkitError, Preempted) as e:
        if debug:
            raise
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        return 130
    except typer.TyperException as e:  # usage errors of typer's bundled click: unknown option, bad value...
        # no traceback even with --debug: it would only show click's parser (and "fit X --debug" lands here)
        if type(e).__name__ == "NoArgsIsHelpError":  # the help was shown already
            return e.exit_code
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "transferkit"
        msg = e.format_message().rstrip()
        msg += "" if msg.endswith((".", ")")) else "."
        err.print(f"[red]error:[/red] {escape(msg)} Fix: see '{escape(where)} --help'.", highlight=False, soft_wrap=True)
        return e.exit_code
    except Exception as e:
        if debug:
            raise
        err.print(f"[red]error:[/red] {escape(f'{type(e).__name__}: {e}')} (run with --debug for the traceback)", highlight=False, soft_wrap=True)
        return 1
    finally:
        warnings.formatwarning = before
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
