"""``posenet-ros train``: train a PoseNet on a dataset, keep resumable checkpoints, export it.

One typed function, :func:`train`, and a thin CLI, :func:`main`. The same code runs on one
process (CPU or one GPU) and under ``torchrun`` with DistributedDataParallel (NCCL on GPUs,
gloo on CPUs; multi-GPU and multi-node)::

    posenet-ros train --config config/train_demo_cpu.yaml --dataset data/synth/dataset
    torchrun --nproc_per_node 4 -m posenet_ros.training.train --config my.yaml --device cuda

Shaped like torchvision's reference ``train.py``: :func:`_setup` builds the parts once (the
labelled frames and training batches, :mod:`~posenet_ros.training.data`; the network, loss,
optimiser and LR schedule, :mod:`~posenet_ros.training.learner` and
:mod:`~posenet_ros.training.schedule`), then every epoch reads train, validate, save
(:func:`~posenet_ros.training.engine.train_one_epoch`,
:func:`~posenet_ros.training.engine.validate`,
:func:`~posenet_ros.training.checkpoint.checkpoint_state`), and :func:`_finish` exports the
best model (TorchScript + ``.pt2``) with a training summary and the resolved config in its
metadata. ``time_budget`` fits the epoch count and schedule to a wall-clock budget
(:class:`~posenet_ros.training.budget.BudgetController`); distributed runs go through
:mod:`~posenet_ros.training.distributed` (docs/training.md).

Reproducibility: the data order of epoch ``e`` is a permutation seeded by ``(seed, e)``
(``DistributedSampler``), the augmentation generator and the global torch RNG (dropout,
stochastic depth) are reseeded from ``(seed, e, rank)`` at the start of every epoch, and every
RNG state is also stored in checkpoints, so ``--resume`` continues exactly (also from a
checkpoint written mid-epoch by Ctrl-C). With ``deterministic: true``
(``torch.use_deterministic_algorithms``) N epochs and N/2 + resume + N/2 give identical weights.

Ctrl-C (SIGINT) or SIGTERM: the current step finishes, a resumable ``last.pt`` is saved, then
``KeyboardInterrupt`` propagates (exit code 130). A second Ctrl-C aborts at once; checkpoints
are replaced atomically, so the previous ``last.pt`` stays valid either way.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from posenet_ros.core.errors import ConfigError
from posenet_ros.training.budget import BudgetController, process_age_s
from posenet_ros.training.checkpoint import (
    TrainState,
    checkpoint_state,
    load_checkpoint,
    read_resume,
    restore_state,
    save_checkpoint,
    set_rng_state,
)
from posenet_ros.training.config import HELP, TrainConfig, config_keys, dump_yaml, load_config
from posenet_ros.training.data import (
    TrainBatches,
    TrainData,
    ValidationSet,
    build_batches,
    dataset_frames,
    load_train_data,
    translation_normalization,
)
from posenet_ros.training.distributed import Distributed, init_distributed
from posenet_ros.training.engine import (
    METRICS_COLUMNS,
    epoch_row,
    evaluate_cached,
    log_epoch,
    stop_on_signal,
    train_one_epoch,
    validate,
    write_metrics,
)
from posenet_ros.training.learner import Learner, build_learner

__all__ = ['TrainResult', 'train', 'main', 'build_parser', 'evaluate_cached',
           'translation_normalization', 'METRICS_COLUMNS']

log = logging.getLogger(__name__)
#: Every trainer module logs under this logger; run_dir/train.log records it.
_TRAINER_LOG = 'posenet_ros.training'


@dataclass
class TrainResult:
    """What :func:`train` produced (on ranks other than 0: only ``model``/``config``/``rank``)."""

    config: TrainConfig
    run_dir: Path
    model: nn.Module  # the network after the last epoch (CPU/GPU, eval mode)
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    export_ts: Path | None = None
    map_path: Path | None = None
    export_pt2: Path | None = None
    export_metadata: dict | None = None
    epochs: int = 0
    best_epoch: int | None = None
    val_median_translation_m: float | None = None
    val_median_rotation_deg: float | None = None
    train_time_s: float = 0.0
    images_per_s: float | None = None
    pos_mean: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    pos_scale: float = 1.0
    history: list = field(default_factory=list)
    rank: int = 0
    world_size: int = 1
    stopped_early: bool = False  # on_epoch_end ended training before cfg.epochs
    n_val: int = 0  # validation frames (holdout or val_split)
    selected_on: str | None = None  # split that chose the exported model; None: last epoch
    time_budget_s: float | None = None


def train(cfg: TrainConfig, on_epoch_end=None, *, started_at: float | None = None
          ) -> TrainResult:
    """Train (or resume) according to ``cfg``; export the best model; return a summary.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this; only rank 0 logs,
    validates, writes checkpoints/metrics and exports. Raises :class:`ConfigError`,
    :class:`~posenet_ros.core.errors.DatasetError`,
    :class:`~posenet_ros.core.errors.CheckpointError`,
    :class:`~posenet_ros.core.errors.TrainingDivergedError`; ``KeyboardInterrupt`` after
    saving a resumable checkpoint.

    ``on_epoch_end(row: dict) -> bool``, called on rank 0 after each epoch's checkpoint with that
    epoch's metrics row: returning True stops training there (early stopping; ``last.pt`` is
    resumable, the best model is still exported).

    ``started_at``: ``time.perf_counter()`` value the ``time_budget`` counts from (the CLI
    passes its process start); default: now.
    """
    t_origin = time.perf_counter() if started_at is None else started_at
    cfg = cfg.validate()
    if not cfg.dataset:
        raise ConfigError('no dataset given: pass --dataset PATH (a dataset folder or bag) or '
                          'set dataset: in the YAML config')
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    dist, device = init_distributed(cfg)
    file_handler = None
    trainer_log = logging.getLogger(_TRAINER_LOG)
    try:
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if cfg.deterministic:
            os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        if dist.main:
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(Path(cfg.run_dir) / 'train.log',
                                               encoding='utf-8')
            file_handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
            trainer_log.addHandler(file_handler)
            if trainer_log.getEffectiveLevel() > logging.INFO:
                trainer_log.setLevel(logging.INFO)
        return _train(cfg, dist, device, on_epoch_end, t_origin)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)
        if file_handler is not None:
            trainer_log.removeHandler(file_handler)
            file_handler.close()
        dist.close()


# --- the trainer's parts, built once ----------------------------------------------------------
@dataclass
class _Parts:
    """What the epoch loop works with, built once by :func:`_setup`."""

    cfg: TrainConfig
    dist: Distributed
    device: torch.device
    data: TrainData  # the labelled frames and the position normalisation
    batches: TrainBatches  # what each training step reads
    val: ValidationSet | None  # the validation frames (rank 0 only)
    learner: Learner  # network, loss, optimiser, LR schedule, grad scaler

    @property
    def last_path(self) -> Path:
        return Path(self.cfg.run_dir) / 'last.pt'

    @property
    def best_path(self) -> Path:
        return Path(self.cfg.run_dir) / 'best.pt'


def _setup(cfg: TrainConfig, dist: Distributed, device: torch.device, ckpt: dict | None
           ) -> _Parts:
    """Data, caches, model, loss, optimiser and schedule (not yet restored from ``ckpt``)."""
    data = load_train_data(cfg, dist.main, ckpt)
    batches = build_batches(cfg, data, dist, device)
    val = ValidationSet.build(cfg, data, dist)
    learner = build_learner(cfg, data, batches.steps, device, dist)
    if dist.main:
        n_params = sum(p.numel() for p in learner.net.parameters())
        h, w = batches.images.size
        log.info('model %s (%.1fM parameters, pretrained=%s), loss %s, %s lr %.3g %s '
                 'schedule, %d steps/epoch of %d x %d process(es), crop %d from %dx%d',
                 cfg.backbone, n_params / 1e6, cfg.pretrained, cfg.loss, cfg.optimizer, cfg.lr,
                 cfg.schedule, batches.steps, batches.batch, dist.world_size, cfg.crop, h, w)
    return _Parts(cfg, dist, device, data, batches, val, learner)


def _train(cfg: TrainConfig, dist: Distributed, device: torch.device, on_epoch_end,
           t_origin: float) -> TrainResult:
    ckpt = read_resume(cfg, dist.main)
    if dist.main:
        log.info('resolved config:\n%s', dump_yaml(cfg).rstrip())
        (Path(cfg.run_dir) / 'config.yaml').write_text(dump_yaml(cfg), encoding='utf-8')
        log.info('device %s, %d process(es), torch %s', device, dist.world_size,
                 torch.__version__)
    run = _setup(cfg, dist, device, ckpt)
    st = TrainState()
    if ckpt is not None:
        st = restore_state(run, ckpt)
        if dist.main:
            log.info('resumed from %s at epoch %d step %d', cfg.resume, st.epoch, st.step)
    budget = BudgetController.from_config(
        cfg, t_origin, len(run.data.train) + len(run.data.val), run.learner.plan,
        steps_per_epoch=run.batches.steps, warm=run.learner.warm, dist=dist)
    if budget is not None:
        budget.begin(st, run.learner.steps_taken)
    run.learner.train_mode(cfg.freeze_bn)
    stopped_early = _epochs(run, st, budget, on_epoch_end)
    return _finish(run, st, stopped_early, budget)


# --- the epoch loop: train, validate, save --------------------------------------------------
class _Trained(NamedTuple):
    """One epoch's training: steps ``first..done-1`` in ``seconds``, loss sums."""

    epoch: int
    first: int
    done: int
    sums: dict
    seconds: float


def _epochs(run: _Parts, st: TrainState, budget: BudgetController | None, on_epoch_end
            ) -> bool:
    """Train, validate and save each epoch until the plan ends; True if stopped early."""
    plan = run.learner.plan  # its epoch count may be re-fitted by the time budget
    with stop_on_signal(True) as stop:
        if run.dist.main and (plan.epochs is None or st.epoch < plan.epochs):
            log.info('training epochs %d..%s (Ctrl-C saves a resumable last.pt)',
                     st.epoch + 1, plan.epochs or '(fitted to the time budget)')
        epoch = st.epoch
        while plan.epochs is None or epoch < plan.epochs:
            trained = _train_epoch(run, st, epoch, stop, budget)
            row, improved = _validate_epoch(run, st, trained, budget)
            _save_epoch(run, st, row, improved, budget)
            if _stops_here(run, row, stop, on_epoch_end):
                return True
            epoch += 1
    return False


def _train_epoch(run: _Parts, st: TrainState, epoch: int, stop: dict,
                 budget: BudgetController | None) -> _Trained:
    """Train ``epoch`` (from the step a mid-epoch checkpoint stopped at); save on a signal."""
    dist, batches = run.dist, run.batches
    first = st.step  # non-zero only when resuming mid-epoch
    if first:
        set_rng_state(st.rng[dist.rank], batches.generator)
        sums = dict(st.partial or {})
    else:
        batches.seed_epoch(run.cfg.seed, epoch, dist.rank)
        sums = {}
    t0 = time.perf_counter()
    sums, done, stopped = train_one_epoch(
        run.learner, batches, dist, epoch, first=first, sums=sums, stop=stop,
        deadline=budget.deadline if budget is not None else None,
        total_epochs=run.learner.plan.epochs, show_progress=run.cfg.progress,
        resume_hint=str(run.last_path) if run.last_path.exists() else 'scratch')
    seconds = time.perf_counter() - t0
    st.train_time += seconds
    if stopped:
        st.epoch, st.step = epoch, done
        ck = checkpoint_state(run, st, sums, budget.state() if budget is not None else None)
        if dist.main:
            save_checkpoint(run.last_path, ck)
            log.warning('interrupted: saved %s (epoch %d, step %d); continue with '
                        '--resume %s', run.last_path, epoch + 1, done, run.last_path)
        raise KeyboardInterrupt
    return _Trained(epoch, first, done, sums, seconds)


def _validate_epoch(run: _Parts, st: TrainState, trained: _Trained,
                    budget: BudgetController | None) -> tuple[dict, bool]:
    """The epoch's metrics row, validated when due; True when the model is the best so far.

    Due: every ``val_every`` epochs, after the last one, and after the time budget's measuring
    epoch or an epoch its deadline cut short. The budget re-fits the plan here, which can make
    this epoch the last one.
    """
    cfg, plan = run.cfg, run.learner.plan
    cut = trained.done < run.batches.steps  # the time budget ended this epoch early
    row = epoch_row(run.learner, run.dist, trained.epoch, trained.sums,
                    (trained.done - trained.first) * run.batches.batch, trained.seconds)
    completed = trained.epoch + 1
    improved = validated = False
    if run.val is not None and (completed % cfg.val_every == 0 or completed == plan.epochs
                                or cut or (budget is not None and budget.measuring)):
        improved, validated = _validate_into(run, st, row, budget), True
    if budget is not None:
        budget.end_epoch(completed, trained.seconds, trained.done - trained.first, cut,
                         run.learner.steps_taken)
        if run.val is not None and not validated and completed == plan.epochs:
            improved = _validate_into(run, st, row, budget)  # now the last epoch
    return row, improved


def _validate_into(run: _Parts, st: TrainState, row: dict, budget: BudgetController | None
                   ) -> bool:
    """Validate (rank 0), add the medians to ``row``; True when this is the best model so far."""
    t0 = time.perf_counter()
    med_t, med_r = validate(run.learner, run.val, run.data.pos_mean, run.data.pos_scale,
                            run.cfg.crop, run.device, 2 * run.batches.batch)
    if budget is not None:
        budget.validated(time.perf_counter() - t0)
    row['val_median_t_m'], row['val_median_r_deg'] = med_t, med_r
    metric = med_t if run.cfg.best_metric == 'translation' else med_r
    return st.improves(row['epoch'], metric, med_t, med_r)


def _save_epoch(run: _Parts, st: TrainState, row: dict, improved: bool,
                budget: BudgetController | None) -> None:
    """``last.pt`` (and ``best.pt`` when improved), ``metrics.csv`` and the epoch's log line."""
    main = run.dist.main
    if main:
        st.history.append(row)
    st.epoch, st.step = row['epoch'], 0
    t0 = time.perf_counter()
    ck = checkpoint_state(run, st, None, budget.state() if budget is not None else None)
    if main:
        if improved:
            save_checkpoint(run.best_path, ck)
        save_checkpoint(run.last_path, ck)
        write_metrics(Path(run.cfg.run_dir) / 'metrics.csv', st.history)
    if budget is not None:
        budget.saved(time.perf_counter() - t0)
    if main:
        log_epoch(row, run.learner.plan.epochs, improved)


def _stops_here(run: _Parts, row: dict, stop: dict, on_epoch_end) -> bool:
    """After a saved epoch: raise KeyboardInterrupt on a signal; True when on_epoch_end stops.

    A signal during validation or saving stops now that ``last.pt`` is complete; rank 0's
    ``on_epoch_end`` decides for every rank.
    """
    main = run.dist.main
    signalled, early = run.dist.any(
        stop['stop'], main and on_epoch_end is not None and bool(on_epoch_end(dict(row))))
    completed, last = row['epoch'], run.learner.plan.epochs
    if signalled and completed < last:
        if main:
            log.warning('interrupted: saved %s after epoch %d; continue with --resume %s',
                        run.last_path, completed, run.last_path)
        raise KeyboardInterrupt
    if early and completed < last:
        if main:
            log.info('stopped after epoch %d by on_epoch_end; continue with --resume %s',
                     completed, run.last_path)
        return True
    return False


# --- the end: the result and the export -----------------------------------------------------
def _finish(run: _Parts, st: TrainState, stopped_early: bool,
            budget: BudgetController | None) -> TrainResult:
    """Sync ranks, fill the result, export the best (else the last) model, build the map."""
    cfg, dist, net = run.cfg, run.dist, run.learner.net
    dist.sync_buffers(net)  # every rank ends with rank 0's (exported) model
    net.eval()
    result = TrainResult(config=cfg, run_dir=Path(cfg.run_dir), model=net, rank=dist.rank,
                         world_size=dist.world_size, epochs=st.epoch,
                         train_time_s=st.train_time, stopped_early=stopped_early,
                         pos_mean=[float(v) for v in run.data.pos_mean],
                         pos_scale=float(run.data.pos_scale), history=st.history,
                         n_val=len(run.data.val),
                         time_budget_s=budget.plan.budget_s if budget is not None else None)
    if not dist.main:
        return result
    result.last_checkpoint = run.last_path
    result.best_checkpoint = run.best_path if run.best_path.exists() else None
    result.selected_on = cfg.val_split if result.best_checkpoint is not None else None
    result.best_epoch = st.best['epoch']
    result.val_median_translation_m = st.best['median_t']
    result.val_median_rotation_deg = st.best['median_r']
    rates = [r['images_per_s'] for r in st.history if r.get('images_per_s')]
    result.images_per_s = float(np.median(rates)) if rates else None
    if cfg.export:
        export_net = net
        if result.best_checkpoint is not None:
            export_net = copy.deepcopy(net)
            export_net.load_state_dict(load_checkpoint(run.best_path)['model'])
        t0 = time.perf_counter()
        _export(cfg, result, export_net, run.data, st.history)
        if budget is not None:
            budget.report_export(time.perf_counter() - t0)
        if cfg.map:
            _build_map(cfg, result)
    if budget is not None:
        budget.report_end()
    return result


def _export(cfg: TrainConfig, result: TrainResult, net: nn.Module, data: TrainData,
            history) -> None:
    from posenet_ros.model.export import export_model
    from posenet_ros.model.paths import dataset_record
    from posenet_ros.model.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    map_frame, camera_frame = dataset_frames(cfg)
    last = history[-1] if history else {}
    training = {
        'epochs': result.epochs, 'best_epoch': result.best_epoch,
        # absolute and relative to the export: found again from any working directory
        **dataset_record(cfg.dataset, cfg.export_dir), 'dataset_kind': cfg.dataset_kind,
        'train_split': cfg.train_split, 'n_train': len(data.train),
        'val_split': cfg.val_split, 'n_val': len(data.val),
        # the split whose median error chose this model (best.pt); None: no validation, the
        # last epoch is exported. 'holdout': frames of train_split never trained on.
        'selected_on': result.selected_on,
        'holdout': ({'fraction': cfg.val_fraction, 'segment': cfg.val_segment,
                     'rule': 'every k-th contiguous segment of each sequence'}
                    if cfg.val_split == 'holdout' else None),
        'time_budget_s': result.time_budget_s,
        'val_median_translation_m': result.val_median_translation_m,
        'val_median_rotation_deg': result.val_median_rotation_deg,
        'val_evaluated_on': 'centre crops of the cached resized val images (eager model)',
        'final_train_loss': last.get('loss'), 'train_time_s': round(result.train_time_s, 2),
        'images_per_s': result.images_per_s, 'world_size': result.world_size,
        'loss': cfg.loss, 's_x': last.get('s_x'), 's_q': last.get('s_q'),
        'quat_loss': cfg.quat_loss, 'quat_hemisphere': cfg.quat_hemisphere,
    }
    if data.quat_ref is not None:  # the reference the loss used (same labels)
        training['quat_reference_wxyz'] = [round(float(v), 8) for v in data.quat_ref]
    out = export_model(net, out_dir=cfg.export_dir, name=cfg.name, resize=cfg.resize,
                       crop=cfg.crop, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       pos_mean=result.pos_mean, pos_scale=result.pos_scale,
                       map_frame=map_frame, camera_frame=camera_frame, training=training,
                       config=cfg.to_dict(), pt2=cfg.export_pt2)
    result.export_ts, result.export_pt2, result.export_metadata = (out.ts_path, out.pt2_path,
                                                                   out.metadata)
    log.info('exported %s%s (model id %s)', out.ts_path,
             f' and {out.pt2_path}' if out.pt2_path else '', out.metadata['model_id'])


def _build_map(cfg: TrainConfig, result: TrainResult) -> None:
    """The scene map of the export (``map: true``), from the training split."""
    from posenet_ros.verify.build import build_map

    path, header = build_map(result.export_ts, dataset=cfg.dataset, split=cfg.train_split,
                             dataset_kind=cfg.dataset_kind, progress=cfg.progress)
    result.map_path = path
    log.info('scene map %s: %d points from %d frames', path, header['stats']['points'],
             header['stats']['frames'])


# --- CLI -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """``posenet-ros train`` options: ``--config`` plus one flag per config key."""
    ap = argparse.ArgumentParser(
        prog='posenet-ros train', argument_default=argparse.SUPPRESS,
        description='Train a PoseNet and export it. Settings: defaults < --config YAML < '
                    'flags (config/train_default.yaml documents every key). Distributed: '
                    'torchrun --nproc_per_node N -m posenet_ros.training.train ...')
    ap.add_argument('--config', dest='config_file', default=None, metavar='YAML',
                    help='YAML file of settings (flat key: value)')
    ap.add_argument('--print-config', action='store_true', default=False,
                    help='print the resolved config as YAML and exit')
    defaults = TrainConfig()
    types = {f.name: f.type for f in fields(TrainConfig)}
    for key in config_keys():
        flag = '--' + key.replace('_', '-')
        default = getattr(defaults, key)
        helptext = f'{HELP[key]} (default: {default})'
        if key == 'resume':
            ap.add_argument(flag, dest=key, nargs='?', const='auto', metavar='CHECKPOINT',
                            help=helptext)
        elif 'bool' in str(types[key]):
            ap.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction,
                            help=helptext)
        else:
            ap.add_argument(flag, dest=key, metavar=key.upper(), help=helptext)
    return ap


def main(argv: list[str] | None = None) -> int:
    """``posenet-ros train``: returns the exit code (130 after Ctrl-C, once saved)."""
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop('config_file')
    print_only = args.pop('print_config')
    cfg = load_config(config_file, args)
    if print_only:
        print(dump_yaml(cfg), end='')
        return 0
    rank = int(os.environ.get('RANK', '0'))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format='%(asctime)s %(levelname)s %(message)s', stream=sys.stderr)
    started_at = time.perf_counter() - process_age_s()  # the budget counts the whole command
    try:
        result = train(cfg, started_at=started_at)
    except KeyboardInterrupt:
        return 130
    if rank == 0:
        parts = [f'trained {result.epochs} epochs in {result.train_time_s:.0f} s']
        if result.val_median_translation_m is not None:
            parts.append(f'best val median {result.val_median_translation_m:.3f} m / '
                         f'{result.val_median_rotation_deg:.2f} deg (epoch {result.best_epoch})')
        if result.export_ts:
            parts.append(f'exported {result.export_ts}')
        if result.map_path:
            parts.append(f'scene map {result.map_path}')
        print('; '.join(parts))
    return 0


if __name__ == '__main__':
    from posenet_ros.cli import main as _cli_main

    sys.exit(_cli_main(['train', *sys.argv[1:]]))
