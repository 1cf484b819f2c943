"""Validation held out of the training split, and training in a wall-clock budget.

Real runs on a tiny rendered dataset: the manifest reader, real optimisation on the CPU, real
checkpoints and exports read back with the production loaders.
"""

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from helpers_data import render_tiny_scene
from helpers_model import one_torch_thread  # noqa: F401 (autouse: one torch thread)

from posenet_ros.core.errors import ConfigError, DatasetError
from posenet_ros.datasets import load_dataset
from posenet_ros.datasets.types import PoseSample
from posenet_ros.model.export import read_metadata
from posenet_ros.training.budget import parse_duration
from posenet_ros.training.checkpoint import load_checkpoint
from posenet_ros.training.config import load_config
from posenet_ros.training.data import labels_fingerprint, translation_normalization
from posenet_ros.training.holdout import holdout_split
from posenet_ros.training.train import train


@pytest.fixture(scope='module')
def no_test_images(tmp_path_factory):
    """A tiny dataset whose test split is listed in the manifest but its images are gone."""
    ds = render_tiny_scene(tmp_path_factory.mktemp('holdout'), n_train=40, n_test=6, width=48,
                           height=40)
    for s in load_dataset(ds, 'test'):
        s.image_path.unlink()
    return ds


def _cfg(ds, out: Path, **kw):
    base = dict(dataset=str(ds), backbone='mobilenet_v3_small', pretrained=None, resize=40,
                crop=32, epochs=3, batch_size=4, lr=1e-3, num_threads=1, progress=False,
                export_pt2=False, run_dir=str(out / 'run'), cache_dir=str(out / 'cache'),
                export_dir=str(out / 'models'), name='m')
    base.update(kw)
    return load_config(None, base)


def _samples(names, stamps=None):
    stamps = stamps or [None] * len(names)
    return [PoseSample(position=np.zeros(3), quaternion=np.array([1.0, 0, 0, 0]), name=n,
                       stamp=t) for n, t in zip(names, stamps)]


def test_holdout_rule_segments_per_sequence():
    # two sequences of 100 frames, listed interleaved: segments never mix sequences
    names = [f'seq-{s}/frame-{i:04d}' for i in range(100) for s in (1, 2)]
    train, val = holdout_split(_samples(names), fraction=0.1, segment=10)
    assert len(val) == 20 and len(train) == 180
    assert {s.name for s in train}.isdisjoint({s.name for s in val})
    assert [s.name for s in train + val] != names and \
        sorted(s.name for s in train + val) == sorted(names)
    for seq in ('seq-1', 'seq-2'):  # one run of 10 consecutive frames from each sequence
        idx = sorted(int(s.name[-4:]) for s in val if s.name.startswith(seq))
        assert idx == list(range(idx[0], idx[0] + 10)) and 0 < idx[0] and idx[-1] < 99
    # ordered by stamp when every frame has one (names in reverse time order here)
    rev = _samples([f'{i:03d}' for i in range(30)], stamps=[100.0 - i for i in range(30)])
    _, val = holdout_split(rev, fraction=0.1, segment=3)
    # the 6th of 10 runs of 3 by time is names 14..12 (by name it would be 15..17)
    assert sorted(int(s.name) for s in val) == [12, 13, 14]
    # deterministic, and a small split still holds out about the fraction
    assert [s.name for s in holdout_split(_samples(names), 0.1, 10)[1]] == \
        [s.name for s in holdout_split(_samples(names), 0.1, 10)[1]]
    assert len(holdout_split(_samples([f'{i}' for i in range(12)]), 0.1, 10)[1]) == 1
    one = _samples(['a'])
    assert holdout_split(one, 0.1, 10) == (one, [])


@pytest.mark.slow
def test_default_training_never_reads_the_test_split(no_test_images, tmp_path):
    ds = no_test_images
    # the test images are really unreadable: validating on them fails
    with pytest.raises(DatasetError):
        train(_cfg(ds, tmp_path / 'named', val_split='test', epochs=1))
    cfg = _cfg(ds, tmp_path / 'default')
    assert cfg.val_split == 'holdout'  # the default
    result = train(cfg)
    all_train = load_dataset(ds, 'train')
    trained, held = holdout_split(all_train, cfg.val_fraction, cfg.val_segment)
    assert result.n_val == len(held) > 0 and result.selected_on == 'holdout'
    # the held-out frames come from the train split, and they were not trained on: the
    # checkpoint's label fingerprint and position normalisation are those of the rest
    assert {s.name for s in held} < {s.name for s in all_train}
    state = load_checkpoint(result.last_checkpoint)
    assert state['train_fingerprint'] == labels_fingerprint(trained)
    assert state['train_fingerprint'] != labels_fingerprint(all_train)
    mean, scale = translation_normalization(np.stack([s.position for s in trained]))
    assert np.allclose(state['pos_mean'], mean) and state['pos_scale'] == pytest.approx(scale)
    meta = read_metadata(result.export_ts)['training']
    assert meta['selected_on'] == 'holdout' and meta['n_val'] == len(held)
    assert meta['n_train'] == len(trained)
    assert meta['holdout']['fraction'] == 0.1 and meta['holdout']['segment'] == 10
    assert meta['best_epoch'] == result.best_epoch is not None


@pytest.mark.slow
def test_selected_on_names_the_split_or_none(tiny_scene, tmp_path):
    named = train(_cfg(tiny_scene, tmp_path / 'a', val_split='test', epochs=1))
    assert read_metadata(named.export_ts)['training']['selected_on'] == 'test'
    none = train(_cfg(tiny_scene, tmp_path / 'b', val_split=None, epochs=1))
    meta = read_metadata(none.export_ts)['training']
    assert meta['selected_on'] is None and meta['n_val'] == 0 and meta['holdout'] is None


@pytest.fixture(scope='module')
def tiny_scene(tmp_path_factory):
    return render_tiny_scene(tmp_path_factory.mktemp('tiny'), n_train=12, n_test=4, width=48,
                             height=40)


@pytest.mark.parametrize('text, seconds', [('20m', 1200), ('90s', 90), ('1h30m', 5400),
                                           ('300', 300), (45, 45), ('2.5h', 9000),
                                           ('1m30s', 90)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize('bad', ['20 minutes', '5x', '-3', '0', '1m1m', 'm'])
def test_bad_time_budget_names_the_format(bad):
    with pytest.raises(ConfigError, match='time_budget'):
        load_config(None, {'time_budget': bad})


@pytest.mark.slow
def test_time_budget_stops_exports_and_resumes(tiny_scene, tmp_path):
    """A 15 s budget for a run configured for 1000 epochs: fitted, stopped, exported."""
    budget = 15.0
    cfg = _cfg(tiny_scene, tmp_path, epochs=1000, time_budget=f'{budget:g}s', val_every=5)
    stops = []
    t0 = time.perf_counter()
    first = train(cfg, on_epoch_end=lambda row: stops.append(row['epoch']) or len(stops) == 3)
    assert first.stopped_early and first.epochs == 3
    plan = load_checkpoint(first.last_checkpoint)['budget']
    assert plan['budget_s'] == budget and 3 < plan['epochs'] < 1000
    assert 0 < plan['used_s'] < budget and plan['epoch_s'] > 0
    second = train(cfg.replace(resume='auto'))
    wall = time.perf_counter() - t0
    # the resumed run finishes a fitted plan (not the configured 1000 epochs) and exports
    assert 3 < second.epochs < 1000
    assert second.export_ts.is_file() and second.selected_on == 'holdout'
    meta = read_metadata(second.export_ts)['training']
    assert meta['time_budget_s'] == budget and meta['epochs'] == second.epochs
    state = load_checkpoint(second.last_checkpoint)
    assert state['budget']['used_s'] > plan['used_s']
    # the LR schedule was fitted to the run's length: the cosine ended near its floor (0.01 lr)
    # rather than at the first percent of a 1000-epoch cosine
    assert state['history'][-1]['lr'] < 0.1 * cfg.lr
    assert wall < 4 * budget  # not a timing test: only "not absurdly beyond"
    # a budget that cannot even fit the export: one epoch, still exported
    tight = train(_cfg(tiny_scene, tmp_path / 'tight', epochs=1000, time_budget='1s'))
    assert tight.epochs == 1 and tight.export_ts.is_file()


def test_cli_time_budget_flag_and_old_val_split(tiny_scene, tmp_path, capsys):
    from posenet_ros.training.train import main

    assert main(['--time-budget', '1h30m', '--val-split', 'test', '--print-config']) == 0
    out = capsys.readouterr().out
    assert 'time_budget: 1h30m' in out and 'val_split: test' in out
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_budget_refit_keeps_the_cosine_continuous_and_ends_at_its_floor():
    from posenet_ros.training.schedule import SchedulePlan, lr_lambda

    cfg = load_config(None, {'epochs': 10, 'warmup_epochs': 1, 'min_lr_ratio': 0.01})
    spe = 8
    # without a re-fit: the plain cosine over cfg.epochs (what every run without a budget gets)
    plain, planned = lr_lambda(cfg, spe), lr_lambda(cfg, spe, SchedulePlan(10))
    assert [plain(s) for s in range(80)] == [planned(s) for s in range(80)]
    plan = SchedulePlan(None)  # measuring epoch: warm-up, then the peak rate
    f = lr_lambda(cfg, spe, plan)
    assert f(7) == 1.0 and f(12) == 1.0
    plan.refit(10, 16, warm=8, steps_per_epoch=spe)
    assert f(16) == 1.0 and f(40) < 1.0
    before = f(40)
    for epochs in (14, 6):  # longer, then shorter: no jump at the re-fit step
        plan.refit(epochs, 40, warm=8, steps_per_epoch=spe)
        assert f(40) == pytest.approx(before, abs=1e-12)
        assert f(epochs * spe) == pytest.approx(0.01) and f(epochs * spe - 1) > 0.01
    assert f(47) < before


def test_budget_controller_fits_refits_resumes_and_cuts(caplog):
    """The controller's decisions on a real clock, with epoch costs given (no training)."""
    from posenet_ros.training.budget import BudgetController
    from posenet_ros.training.checkpoint import TrainState
    from posenet_ros.training.distributed import Distributed
    from posenet_ros.training.schedule import SchedulePlan, lr_lambda

    cfg = load_config(None, {'time_budget': '100s', 'val_every': 1, 'export': False})
    spe = 10

    def controller(schedule):
        return BudgetController.from_config(cfg, time.perf_counter(), 0, schedule,
                                            steps_per_epoch=spe, warm=0, dist=Distributed())

    assert BudgetController.from_config(cfg.replace(time_budget=None), 0.0, 0, SchedulePlan(5),
                                        steps_per_epoch=spe, warm=0, dist=Distributed()) is None
    schedule = SchedulePlan(None)
    ctl = controller(schedule)
    ctl.begin(TrainState(), 0)
    assert ctl.measuring and schedule.epochs is None
    # the measuring epoch: 8 s + a 1 s validation; 100 s - 2 s margin - 1 s final validation
    # leaves ~97 s, 10 more epochs of 9 s
    ctl.validated(1.0)
    ctl.end_epoch(1, 8.0, spe, cut=False, step=spe)
    assert not ctl.measuring and schedule.epochs == 11
    lr = lr_lambda(cfg, spe, schedule)
    before = lr(20)
    ctl.saved(1.0)  # the checkpoint save counts in the next epoch's cost: 29 + 1 s
    with caplog.at_level('INFO', logger='posenet_ros.training'):
        ctl.end_epoch(2, 29.0, spe, cut=False, step=2 * spe)
    assert 'running late' in caplog.text
    assert schedule.epochs == 2 + int(97 // 20)  # mean of 8 and 30 s, + 1 s validation
    assert lr(20) == pytest.approx(before, abs=1e-12)  # re-spread, not restarted
    stored = ctl.state()
    assert stored['budget_s'] == 100 and stored['epoch_s'] == 19 and stored['val_s'] == 1
    assert stored['epochs'] == schedule.epochs and stored['anchor_step'] == 2 * spe
    # a resumed run takes the stored plan and its anchor, counts the time already used,
    # and re-fits from the stored measurements (same plan here: little time has passed)
    resumed = SchedulePlan(None)
    again = controller(resumed)
    again.begin(TrainState(epoch=2, budget=stored), 2 * spe)
    assert resumed.to_dict() == schedule.to_dict()
    assert again.plan.used_before_s == stored['used_s'] and again.plan.recent == [19]
    # an epoch resumed mid-way is scaled up to a full one: 5 steps in 5 s cost 10 s
    again.end_epoch(3, 5.0, spe // 2, cut=False, step=3 * spe)
    assert again.plan.epoch_s == pytest.approx((19 + 10) / 2)
    # the deadline cut an epoch short: training stops there, its cost is not measured
    again.end_epoch(4, 1.0, 3, cut=True, step=3 * spe + 3)
    assert resumed.epochs == 4 and again.plan.recent == [19, 10]
    assert again.deadline == pytest.approx(again.plan.origin + 100 - stored['used_s'] - 2)
