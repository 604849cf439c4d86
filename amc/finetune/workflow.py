"""The fine-tune workflow behind ``amc-finetune``: a pruned model trained back, optionally distilling the unpruned
model into it.

Where the pruned model comes from: an amc-search run directory (``run=``: its pruned model, its base model as
teacher), a policy applied to ``model=`` (``policy=``), an already pruned amc model, or ``model=`` pruned uniformly
to ``budget.flops`` first. The run directory holds ``finetune_config.yaml`` (what the run started with;
``resume=`` reads it back), ``start/`` (the pruned model before fine-tuning), ``best/`` (the best EMA weights by
validation fitness, amc format), ``last/`` and ``trainer_state.pt`` (for ``resume=``), ``tensorboard/`` and
``metrics.json``.

Under ``torchrun --nproc_per_node=N`` every process runs this workflow: each builds the same models and data,
trains its share of every global batch (:mod:`amc.finetune.launch`, :mod:`amc.train.distributed`), and rank 0
alone writes the run directory, evaluates and prints.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from amc.atomic import atomic_write_json, atomic_write_text
from amc.config import config_number, plain
from amc.console import console, print_table
from amc.data.datasets import cache_dir
from amc.data.loaders import EvalSet, TrainSet, sample_batches
from amc.errors import CheckpointError, ConfigError
from amc.eval.evaluator import DetectionEvaluator, check_classes
from amc.factory import (load_data_from_config, load_model_from_config, make_criterion, model_source,
                         rounding_from_config)
from amc.finetune.launch import Processes, check_processes, describe, join, shared_run_dir
from amc.finetune.qat import QatSettings, quantization_aware_training
from amc.finetune.resume import CONFIG_FILE, FINETUNE_RESUME, RUN_MARKER, START_DIR
from amc.models import load_model
from amc.models.io import ARCH_FILE, resolve_path, save_model
from amc.pruning.apply import apply_policy
from amc.pruning.baselines import uniform_policy
from amc.pruning.policy import Policy
from amc.pruning.space import PruningSpace
from amc.resume import apply_changes, resume_changes
from amc.search.resume import CONFIG_FILE as SEARCH_CONFIG, RUN_MARKER as SEARCH_MARKER
from amc.search.rundir import BEST_POLICY_FILE, check_writable
from amc.train.distill import DistillationLoss, check_teacher, collect_features, feature_layers
from amc.train.distributed import SINGLE, errors_from_rank_zero, launch, stop
from amc.train.loss import YOLOv7Loss, scale_hyp
from amc.train.trainer import Trainer, TrainConfig, fitness

ADAPTER_INITS = ("lstsq", "random")


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """Every number of the config, checked before any work (a typo never surfaces mid-run)."""

    epochs: int
    batch_size: int
    nominal_batch_size: int
    warmup_min_iters: int
    eval_every: int
    train_images: int | None
    val_images: int | None
    workers: int
    threads: int
    seed: int
    ema_decay: float
    ema_tau: float
    output_weight: float
    feature_weight: float
    temperature: float
    feature_layers: list[int] | None
    adapter_init: str
    fit_batches: int

    @property
    def kd(self) -> bool:
        return self.output_weight > 0 or self.feature_weight > 0

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Settings":
        kd, ema = cfg.kd, cfg.ema
        layers = kd.get("feature_layers")
        if layers is not None:
            if not OmegaConf.is_list(layers):
                raise ConfigError(f"kd.feature_layers must be a list of layer indices or null, got {layers!r}")
            layers = list(layers)
        init = str(kd.get("adapter_init"))
        if init not in ADAPTER_INITS:
            raise ConfigError(f"kd.adapter_init must be one of {', '.join(ADAPTER_INITS)}, got {init!r}")
        temperature = config_number(kd, "temperature", float, 0.0, prefix="kd.")
        if temperature <= 0:
            raise ConfigError(f"kd.temperature must be > 0, got {temperature}")
        for key in ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs"):
            config_number(cfg.hyp, key, float, 0.0, prefix="hyp.")
        if float(cfg.hyp.lr0) <= 0:
            raise ConfigError(f"hyp.lr0 must be > 0, got {cfg.hyp.lr0}")
        return cls(epochs=config_number(cfg, "epochs", int, 1),
                   batch_size=config_number(cfg, "batch_size", int, 1),
                   nominal_batch_size=config_number(cfg, "nominal_batch_size", int, 1),
                   warmup_min_iters=config_number(cfg, "warmup_min_iters", int, 0),
                   eval_every=config_number(cfg, "eval_every", int, 1),
                   train_images=config_number(cfg, "train_images", int, 1, optional=True),
                   val_images=config_number(cfg, "val_images", int, 1, optional=True),
                   workers=config_number(cfg, "workers", int, 0),
                   threads=config_number(cfg, "threads", int, 0),
                   seed=config_number(cfg, "seed", int),
                   ema_decay=config_number(ema, "decay", float, 0.0, 1.0, prefix="ema."),
                   ema_tau=config_number(ema, "tau", float, 1e-9, prefix="ema."),
                   output_weight=config_number(kd, "output_weight", float, 0.0, prefix="kd."),
                   feature_weight=config_number(kd, "feature_weight", float, 0.0, prefix="kd."),
                   temperature=temperature, feature_layers=layers, adapter_init=init,
                   fit_batches=config_number(kd, "fit_batches", int, 1, prefix="kd."))


# ---------------------------------------------------------------------------------------------- sources
@dataclass
class Models:
    """The model to fine-tune, the teacher (the unpruned model) and where they came from."""

    student: Any
    student_source: str
    how: str
    teacher: Any | None
    teacher_source: str | None


def _overridden(group: str, overrides: Sequence[str]) -> bool:
    """Whether the command line (its ``overrides``) set ``group`` or anything in it (``data=coco``,
    ``data.path=...``)."""
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key == group or key.startswith(f"{group}."):
            return True
    return False


def _absolute(source: str) -> str:
    """A user path made absolute (a resumed run may start elsewhere); names of packaged models stay as they are."""
    p = Path(source).expanduser()
    return str(p.resolve()) if p.exists() else source


def _model_meta(source: str) -> dict[str, Any]:
    """The metadata of an amc model folder (``architecture.yaml``), {} for anything else."""
    try:
        p = resolve_path(source)
    except Exception:  # noqa: BLE001 (load_model reports unreadable sources properly)
        return {}
    folder = p if p.is_dir() else p.parent
    try:
        meta = yaml.safe_load((folder / ARCH_FILE).read_text()) if (folder / ARCH_FILE).is_file() else {}
    except (OSError, yaml.YAMLError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _load(source: str):  # noqa: ANN202
    model, _ = load_model(source)
    return model


def _teacher(source: str | None, needed: bool, why: str):  # noqa: ANN202
    """Load the teacher from ``source``; a missing one is an error only when distillation needs it."""
    if not source:
        if needed:
            raise ConfigError(f"distillation needs the unpruned model as teacher, and {why}: give teacher.path=... "
                              f"or turn distillation off with kd.output_weight=0 kd.feature_weight=0")
        return None, None
    try:
        return _load(source), _absolute(source)
    except CheckpointError as e:
        if needed:
            raise ConfigError(f"teacher {source}: {e} (give teacher.path=..., or kd.output_weight=0 "
                              f"kd.feature_weight=0 for plain fine-tuning)") from None
        console.print(f"[yellow]no teacher row: {source} cannot be loaded ({e})[/yellow]")
        return None, None


def _calibration(data_cfg: DictConfig, criterion, img_size: int, seed: int):  # noqa: ANN001, ANN202
    """Training batches for a data-driven channel criterion (taylor, ls), None for the others."""
    if not criterion.needs_data:
        return None
    train = load_data_from_config(data_cfg, str(data_cfg.get("train_split") or "train"))
    return sample_batches(train, 4, 8, img_size, seed=seed)


def _apply(base, policy, data_cfg: DictConfig, criterion_name: str | None, img_size: int, seed: int):  # noqa: ANN001, ANN202
    """``policy`` (a :class:`Policy`) applied to ``base``: the physically pruned model."""
    space = PruningSpace.from_model(base, policy.img_size, policy.rounding)
    ratios = policy.ratios_for(space)  # a policy made for another model: one-line ConfigError
    criterion = make_criterion(str(criterion_name or policy.criterion), seed=seed)
    pruned, _ = apply_policy(base, space, ratios, criterion, _calibration(data_cfg, criterion, img_size, seed))
    return pruned


def search_run_config(run: Path) -> DictConfig:
    """The config an amc-search run directory started with; refuses anything else in one line."""
    if not run.is_dir():
        raise ConfigError(f"run={run}: no such directory (give the run directory of an amc-search)")
    try:
        data = yaml.safe_load((run / SEARCH_CONFIG).read_text()) if (run / SEARCH_CONFIG).is_file() else None
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict) or data.get(SEARCH_MARKER) != 1 or not isinstance(data.get("config"), dict):
        raise ConfigError(f"run={run} is not an amc-search run directory (no valid {SEARCH_CONFIG} in it)")
    return OmegaConf.create(data["config"])


def models_from_search_run(cfg: DictConfig, run: Path, search: DictConfig, s: Settings, img_size: int,
                           data_cfg: DictConfig) -> Models:
    """``run=``: the search's exported ``model/`` (else its ``best_policy.yaml`` applied to its base model)."""
    base_source: str | None = None
    base = None
    try:
        base_source = model_source(search.model)
    except Exception:  # noqa: BLE001 (reported below, only if the base model is needed)
        base_source = None
    teacher_path = cfg.teacher.get("path")
    model_dir = run / "model"
    if (model_dir / "architecture.yaml").is_file():
        student, how = _load(str(model_dir)), f"{model_dir} (the search's best policy)"
        source = str(model_dir.resolve())
    else:
        policy_file = run / BEST_POLICY_FILE
        if not policy_file.is_file():
            raise ConfigError(f"run={run} holds neither model/ nor {BEST_POLICY_FILE}: the search has not found a "
                              f"policy yet (continue it with amc-search resume={run})")
        if base_source is None:
            raise ConfigError(f"run={run}: the base model of the search cannot be found; set model.path in its "
                              f"{SEARCH_CONFIG} or give policy={policy_file} model.path=...")
        base, _, _ = load_model_from_config(search.model)
        student = _apply(base, Policy.load(policy_file), data_cfg, cfg.get("criterion"), img_size, s.seed)
        how, source = f"{policy_file} applied to {base_source}", str(policy_file.resolve())
    if teacher_path:
        teacher, teacher_source = _teacher(str(teacher_path), s.kd, "")
    elif base is not None:
        teacher, teacher_source = base, _absolute(base_source)
    else:
        teacher, teacher_source = _teacher(base_source, s.kd, f"the base model of {run} cannot be found")
    return Models(student, source, how, teacher, teacher_source)


def models_from_config(cfg: DictConfig, s: Settings, img_size: int) -> Models:
    """``policy=FILE`` applied to ``model=``, or ``model=`` itself (pruned uniformly first unless already pruned)."""
    teacher_path = cfg.teacher.get("path")
    if cfg.get("policy"):
        policy = Policy.load(str(cfg.policy))  # malformed file: one-line ConfigError, before loading the model
        base, _, base_source = load_model_from_config(cfg.model)
        student = _apply(base, policy, cfg.data, cfg.get("criterion"), img_size, s.seed)
        teacher, teacher_source = base, _absolute(base_source)
        if teacher_path:
            teacher, teacher_source = _teacher(str(teacher_path), s.kd, "")
        return Models(student, _absolute(str(cfg.policy)), f"{cfg.policy} applied to {base_source}", teacher,
                      teacher_source)
    model, _, source = load_model_from_config(cfg.model)
    meta = _model_meta(source)
    pruned_from = meta.get("pruned_from")
    budget = cfg.budget.get("flops")
    if pruned_from or budget is None:
        # An already pruned amc model (written by amc-prune, amc-search or amc-finetune), or budget.flops=null.
        origin = f" (pruned from {pruned_from})" if pruned_from else ""
        if teacher_path:
            teacher, teacher_source = _teacher(str(teacher_path), s.kd, "")
        else:
            candidate = str(pruned_from) if pruned_from and Path(str(pruned_from)).expanduser().exists() else None
            why = (f"the model it was pruned from ({pruned_from}) is not found" if pruned_from else
                   f"{source} does not say which model it was pruned from")
            teacher, teacher_source = _teacher(candidate, s.kd, why)
        return Models(model, _absolute(source), f"{source}{origin}", teacher, teacher_source)
    flops = config_number(cfg.budget, "flops", float, prefix="budget.")
    if not 0.0 < flops <= 1.0:
        raise ConfigError(f"budget.flops must be a fraction in (0, 1] of the unpruned FLOPs (or null: fine-tune "
                          f"model= as it is), got {flops}")
    space = PruningSpace.from_model(model, img_size, rounding_from_config(cfg.pruning))
    found = uniform_policy(space, flops)  # an unreachable budget: one-line ConfigError
    criterion = make_criterion(str(cfg.get("criterion") or "l1"), seed=s.seed)
    student, _ = apply_policy(model, space, found.ratios, criterion, _calibration(cfg.data, criterion, img_size, s.seed))
    teacher, teacher_source = model, _absolute(source)
    if teacher_path:
        teacher, teacher_source = _teacher(str(teacher_path), s.kd, "")
    return Models(student, _absolute(source), f"{source} pruned uniformly to {flops:g} of its FLOPs "
                  f"(ratio {found.ratios[0]:.3f}, {criterion.name} channels)", teacher, teacher_source)


# ---------------------------------------------------------------------------------------------- run directory
def _check_run_dir(out: Path, resuming: bool) -> None:
    check_writable(out)
    if not resuming and (out / CONFIG_FILE).exists():
        raise ConfigError(f"{out} already holds a fine-tune: continue it with resume={out} or choose another "
                          f"hydra.run.dir")


def load_resume(out: Path) -> dict[str, Any]:
    """What a fine-tune in ``out`` started with; refuses folders that are not amc-finetune runs."""
    if not out.is_dir():
        raise ConfigError(f"resume={out}: no such directory (give the run directory of an amc-finetune)")
    path = out / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict) or data.get(RUN_MARKER) != 1 or not (out / START_DIR).is_dir():
        raise ConfigError(f"resume={out} is not an amc-finetune run directory (no valid {CONFIG_FILE} and "
                          f"{START_DIR}/ in it)")
    return data


# ---------------------------------------------------------------------------------------------- the workflow
def run_finetune(cfg: DictConfig, out: Path, overrides: Sequence[str] = ()) -> dict:
    """The workflow on a composed ``conf/finetune.yaml`` writing into ``out`` (with ``resume``: the run in ``out``).

    ``overrides`` are the command line's (Hydra's task overrides): what a resume may change, and whether the
    command line chose the data of a ``run=`` fine-tune itself. Started by torchrun, every process calls it; a
    user error is reported once, by rank 0."""
    out = Path(out)
    resuming = bool(cfg.get("resume"))
    started = time.perf_counter()
    where = launch()
    with errors_from_rank_zero(where):
        record = None
        if resuming:
            record = load_resume(out)
            # the run continues with the config it started with (other differences were refused before Hydra started)
            cfg = apply_changes(OmegaConf.create(record["config"]), resume_changes(FINETUNE_RESUME, cfg, overrides))
        s = Settings.from_config(cfg)
        if cfg.get("run") and cfg.get("policy"):
            raise ConfigError("give run=<amc-search run directory> or policy=FILE, not both")
        processes = join(check_processes(cfg, s.batch_size, where))
        try:
            out = shared_run_dir(out, processes.where, lambda folder: _check_run_dir(folder, resuming))
            result = finetune(cfg, s, out, record, started, overrides, processes)
            stop(wait=True)  # every process leaves together: see stop()
            return result
        finally:
            stop()


def finetune(cfg: DictConfig, s: Settings, out: Path, record: dict[str, Any] | None, started: float,
             overrides: Sequence[str] = (), processes: Processes | None = None) -> dict:
    if s.threads:
        torch.set_num_threads(s.threads)
    processes = processes or check_processes(cfg, s.batch_size, SINGLE)
    device, main = processes.device, processes.where.main
    qat = QatSettings.from_config(cfg)
    img_size = config_number(cfg, "img_size", int, 32, optional=True)
    data_cfg = cfg.data
    search = search_run_config(Path(str(cfg.run))) if cfg.get("run") and record is None else None
    if search is not None and search.get("data") is not None and not _overridden("data", overrides):
        data_cfg = search.data  # the data the search scored on, unless the command line says otherwise
    if record is not None:  # resume: the pruned model as it started, the teacher it used
        models = Models(_load(str(out / START_DIR)), record["student"], record["how"], None,
                        record.get("teacher"))
        if models.teacher_source:
            models.teacher, _ = _teacher(models.teacher_source, s.kd, "")
        data_cfg = OmegaConf.create(record["data"])
        img_size = int(record["img_size"])
    else:
        img_size = img_size or config_number(data_cfg, "img_size", int, 32, prefix="data.")
        if search is not None:
            models = models_from_search_run(cfg, Path(str(cfg.run)), search, s, img_size, data_cfg)
        else:
            models = models_from_config(cfg, s, img_size)
    student, teacher = models.student, models.teacher
    stride = int(max(student.stride.tolist()))
    if img_size % stride:
        raise ConfigError(f"img_size must be a multiple of the model's largest stride {stride}, got {img_size}")
    if s.kd:
        if teacher is None:
            raise ConfigError("distillation needs the unpruned model as teacher: give teacher.path=... or turn it "
                              "off with kd.output_weight=0 kd.feature_weight=0")
        check_teacher(student, teacher)
        if s.feature_weight > 0:
            feature_layers(student, s.feature_layers)

    # Data (class counts checked before any image is decoded).
    train = load_data_from_config(data_cfg, str(data_cfg.get("train_split") or "train"))
    val = load_data_from_config(data_cfg, str(data_cfg.split))
    train, val = train.subset(s.train_images, s.seed), val.subset(s.val_images, s.seed)
    check_classes(student, val)
    check_classes(student, train)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"no images to {'train' if len(train) == 0 else 'evaluate'} on ({train.source})")

    if record is None and main:
        save_model(student, out / START_DIR, extra={"pruned_from": models.teacher_source, "source": models.how})
        atomic_write_text(out / CONFIG_FILE, yaml.safe_dump({
            RUN_MARKER: 1, "config": plain(cfg), "student": models.student_source, "how": models.how,
            "teacher": models.teacher_source, "data": plain(data_cfg), "img_size": img_size}, sort_keys=False))
    console.print(f"fine-tuning {models.how}" + (f"; teacher {models.teacher_source}" if s.kd else "; no distillation")
                  + f"; {len(train)} train / {len(val)} val images at {img_size} px on {device}")

    hyp = plain(cfg.hyp)
    student.to(device)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    evaluate, before, teacher_row = None, None, None
    if main:  # rank 0 scores the models for the run
        eval_set = EvalSet(val, img_size, 32, max(32, stride), pad=0.5, progress=bool(cfg.progress),
                           cache_path=cache_dir() / "evalsets" if cfg.get("cache", True) else None)
        evaluator = DetectionEvaluator(val, eval_set, device=device, map_backend="fast")

        def evaluate(model) -> dict[str, float]:  # noqa: ANN001
            return evaluator(model).to_dict()

        def row(model) -> dict[str, Any]:  # noqa: ANN001
            cost = model.cost(img_size)
            return {**{k: v for k, v in evaluate(model).items() if k in ("map50_95", "map50")},
                    "params": cost.params, "gflops": cost.gflops}

        before = row(student)
        teacher_row = row(teacher) if teacher is not None else None

    train_set = TrainSet(train, img_size=img_size, augment=True, hyp=hyp, seed=s.seed,
                         progress=bool(cfg.progress) and main)
    base_loss = YOLOv7Loss(student, scale_hyp(hyp, student.head.nl, student.nc, img_size),
                           ota=bool(int(hyp.get("loss_ota", 1))))
    criterion: Any = base_loss
    adapters = None
    fit_left = None
    if s.kd:
        torch.manual_seed(s.seed)  # the adapters' initial weights
        criterion = DistillationLoss(base_loss, student, teacher, s.output_weight, s.feature_weight,
                                     s.temperature, s.feature_layers)
        adapters = criterion.adapters
        if adapters is not None:
            adapters.to(device)
            if s.adapter_init == "lstsq":
                batches = sample_batches(train, s.fit_batches, s.batch_size, img_size, seed=s.seed, augment=True)
                calib = copy.deepcopy(student).train()  # training-mode features, the student's BN left untouched
                images = torch.cat([b[0] for b in batches]).to(device)
                fit_left = adapters.fit_(collect_features(calib, adapters.layers, images),
                                         collect_features(teacher, adapters.layers, images))
                del calib
    config = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, nominal_batch_size=s.nominal_batch_size,
                         warmup_min_iters=s.warmup_min_iters, ema_decay=s.ema_decay, ema_tau=s.ema_tau,
                         amp=bool(cfg.amp), workers=s.workers, seed=s.seed, eval_interval=s.eval_every,
                         save_dir=out, resume=record is not None, tensorboard=bool(cfg.tensorboard),
                         progress=bool(cfg.progress), sync_bn=processes.settings.sync_bn,
                         export_extra={"pruned_from": models.teacher_source, "finetuned_from": models.how})
    trainer = Trainer(student, train_set, hyp, criterion, config, device, evaluate=evaluate, extra=adapters,
                      dist=processes.where)
    if trainer.start_epoch >= s.epochs:
        console.print(f"{out} has finished its {s.epochs} epochs: nothing left to train, reporting it")
    elif trainer.start_epoch:
        console.print(f"resuming {out} at epoch {trainer.start_epoch + 1} of {s.epochs}")
    try:
        result = trainer.fit()
    finally:
        if isinstance(criterion, DistillationLoss):
            criterion.close()
    qat_metrics = quantization_aware_training(  # qat=true: QAT of the best model into out/qat (amc/finetune/qat.py)
        qat, result.best_dir or result.last_dir, out, train, train_set, hyp, evaluate, device, img_size, config,
        record is not None, main, dist=processes.where) if qat.enabled else None
    if not main:
        return {"rank": processes.where.rank, **describe(processes)}

    scored = [h for h in result.history if "map50_95" in h]
    best = max(scored, key=fitness) if scored else {}
    after = {"map50_95": result.best_metrics.get("map50_95"), "map50": result.best_metrics.get("map50"),
             "params": before["params"], "gflops": before["gflops"]}
    losses = {k: v for k, v in result.history[-1].items() if k in trainer.loss_names} if result.history else {}
    metrics = {
        "student": models.student_source, "how": models.how, "teacher": models.teacher_source,
        "epochs": result.epochs_done, "best_epoch": best.get("epoch"),
        "best_map50_95": after["map50_95"], "best_map50": after["map50"],
        "map50_95": after["map50_95"], "map50": after["map50"],
        "before": before, "after": after, "unpruned": teacher_row, "losses": losses,
        "kd": {"output_weight": s.output_weight, "feature_weight": s.feature_weight, "temperature": s.temperature,
               "feature_layers": getattr(criterion, "layers", None) or None, "adapter_init": s.adapter_init,
               "adapter_fit_relative_error": fit_left},
        "history": result.history, "img_size": img_size, "train_images": len(train), "val_images": len(val),
        "data": val.source, "device": str(device), **describe(processes), "seconds": time.perf_counter() - started,
        "best_dir": str(result.best_dir) if result.best_dir else None, "last_dir": str(result.last_dir),
        "qat": qat_metrics,
    }
    atomic_write_json(out / "metrics.json", metrics)

    def fmt(r: dict[str, Any] | None, name: str) -> list[str]:
        if r is None:
            return []
        m = (lambda v: "-" if v is None else f"{v:.4f}")
        return [name, m(r["map50_95"]), m(r["map50"]), f"{r['params']:,}", f"{r['gflops']:.3f}"]

    kd_text = (f"KD output {s.output_weight:g}, features {s.feature_weight:g}" if s.kd else "no KD")
    rows = [r for r in (fmt(teacher_row, "unpruned"), fmt(before, "pruned, before"),
                        fmt(after, f"fine-tuned (epoch {best.get('epoch', '-')})")) if r]
    epochs = f"{result.epochs_done} epoch{'s' if result.epochs_done != 1 else ''}"
    print_table(f"fine-tuning ({epochs}, {kd_text}) on {val.source}: {len(val)} val images, {img_size} px",
                ["model", "mAP@0.5:0.95", "mAP@0.5", "params", "GFLOPs"], rows)
    console.print(f"best model in {result.best_dir}; metrics.json, last/ and trainer_state.pt (resume={out}) in {out}")
    return metrics

