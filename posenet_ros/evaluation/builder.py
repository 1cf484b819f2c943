"""One report builder for the offline and the live evaluation (no rclpy).

Both evaluations score a model on the frames of a dataset split or a bag and write the same
report (``posenet_ros.evaluation.report.write_report``). What they share is assembled here:

* :class:`Baselines` - the training set of the baselines (``--train-dataset``, else the
  dataset's train split, else the one recorded in the model's metadata) and the
  nearest-neighbour feature extractor;
* :class:`ReportBuilder` - the evaluated frames (ground truth, and each frame's
  nearest-neighbour feature), the methods, the ``source`` and ``notes`` of the report, the
  ``verification`` section and any other summary section; :meth:`ReportBuilder.write` adds the
  baselines on the same frames and writes the report files.

What differs stays with each evaluation: the offline one runs the model on each frame
(``posenet_ros.evaluation.evaluate``); the live one plays a bag into the running node and
records what it publishes (``posenet_ros.ros.live_eval``).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import EvaluationError, PoseNetError
from posenet_ros.evaluation.metrics import frame_errors
from posenet_ros.evaluation.report import (
    WRONG_VERIFIED,
    GroundTruth,
    MethodResult,
    write_report,
)

__all__ = ['Baselines', 'ReportBuilder', 'baseline_training_set', 'verification_summary']


# --- baselines ------------------------------------------------------------------------------
def baseline_training_set(dataset, split, train_dataset, meta, notes,
                          model_path=None) -> tuple[list, str]:
    """``(training samples, where from)`` for the baselines; ``([], '')`` with a note if none.

    The training set the export records is looked for as ``posenet_ros.model.paths`` says
    (absolute, then relative to ``model_path``'s folder).
    """
    from posenet_ros.datasets import load_dataset

    if train_dataset is not None:
        return load_dataset(train_dataset, 'train'), str(train_dataset)
    if dataset is not None and split != 'train':
        try:
            return load_dataset(dataset, 'train'), f'{dataset} (train split)'
        except PoseNetError as exc:
            notes.append(f'no training split in {dataset} for baselines: {exc}')
    from posenet_ros.model.paths import recorded_dataset

    training = meta.get('training') or {}
    recorded = recorded_dataset(meta, model_path)
    train_split = str(training.get('train_split') or 'train')
    if recorded is not None:
        try:
            return (load_dataset(recorded, train_split),
                    f'{recorded} ({train_split} split, from the model metadata)')
        except PoseNetError as exc:
            notes.append(f'training set recorded in the model ({recorded}) unreadable: {exc}')
    notes.append('baselines skipped: no training set (pass --train-dataset DIR)')
    return [], ''


@dataclass
class Baselines:
    """The baselines' training samples, where they come from, and the NN feature extractor.

    Empty (no training set, or baselines disabled): the report has no baseline.
    """

    train: list = field(default_factory=list)
    source: str = ''
    extractor: object = None  # posenet_ros.evaluation.baselines.FeatureExtractor or None

    @classmethod
    def prepare(cls, model, meta: dict, notes: list[str], *, dataset=None, split: str = 'test',
                train_dataset=None, nn_features: str = 'auto', device: str = 'cpu',
                module=None) -> Baselines:
        """Find the training set and build the nearest-neighbour feature extractor.

        ``module``: the model's loaded TorchScript module, if any (saves loading it again).
        Why a baseline is skipped is appended to ``notes``.
        """
        train, source = baseline_training_set(dataset, split, train_dataset, meta, notes,
                                              model)
        if not train:
            return cls()
        from posenet_ros.evaluation.baselines import feature_extractor

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            extractor = feature_extractor(model, meta, nn_features, device, module=module)
        notes += [str(c.message) for c in caught if 'nearest-neighbour' in str(c.message)]
        return cls(train, source, extractor)

    def add_to(self, methods: dict, test_feats: list, n: int, show_progress: bool) -> None:
        """Add the mean-pose and nearest-neighbour predictions for the ``n`` evaluated frames."""
        from posenet_ros.core.progress import progress
        from posenet_ros.datasets import load_image
        from posenet_ros.evaluation.baselines import mean_pose, nearest_neighbour

        train_p = np.array([s.position for s in self.train])
        train_q = np.array([s.quaternion for s in self.train])
        p, q = mean_pose(train_p, train_q)
        methods['mean_pose'] = MethodResult(
            np.tile(p, (n, 1)), np.tile(q, (n, 1)), np.ones(n, bool), None,
            f'mean training pose of {self.source} ({len(self.train)} frames)')
        if self.extractor is None:
            return
        t0 = time.perf_counter()
        train_feats = [self.extractor([load_image(s)])[0] for s in progress(
            self.train, desc='nn features', unit='frame', disable=not show_progress)]
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        idx = nearest_neighbour(np.stack(train_feats), np.stack(test_feats))
        search_ms = (time.perf_counter() - t0) * 1e3 / n
        methods['nearest_neighbour'] = MethodResult(
            train_p[idx], train_q[idx], np.ones(n, bool), np.full(n, search_ms),
            f'pose of the nearest training frame by cosine similarity of '
            f'{self.extractor.description} ({len(self.train)} frames indexed in {build_s:.1f} '
            's; ms = search only, feature extraction not included)')


# --- verification ---------------------------------------------------------------------------
def _median(a) -> float:
    a = np.asarray(a, float)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if len(a) else math.nan


def verification_summary(coarse: MethodResult, refined: MethodResult, gt: GroundTruth, map_path,
                         statuses: list[str], inliers: np.ndarray, stages: dict) -> dict:
    """The ``verification`` section of a summary (offline and live evaluation).

    ``refined.valid`` marks the verified frames; ``statuses`` holds each frame's status;
    ``stages``: ms p50/p95 per refinement stage.
    """
    n = len(statuses)
    t_err, r_err = frame_errors(refined.positions, refined.quaternions, gt.positions,
                                gt.quaternions, refined.valid)
    ct, cr = frame_errors(coarse.positions, coarse.quaternions, gt.positions, gt.quaternions,
                          coarse.valid)
    ok = refined.valid
    wrong = ok & ((t_err > WRONG_VERIFIED[0]) | (r_err > WRONG_VERIFIED[1]))
    n_ok = int(ok.sum())
    return {
        'map': str(map_path), 'n_frames': n, 'n_verified': n_ok,
        'n_unverified': statuses.count('unverified'), 'n_rejected': statuses.count('rejected'),
        'verified_fraction': n_ok / n if n else math.nan,
        'verified_median_t_m': _median(t_err[ok]), 'verified_median_r_deg': _median(r_err[ok]),
        'coarse_median_t_m_on_verified': _median(ct[ok]),
        'coarse_median_r_deg_on_verified': _median(cr[ok]),
        'wrong_threshold': {'m': WRONG_VERIFIED[0], 'deg': WRONG_VERIFIED[1]},
        'n_wrong_verified': int(wrong.sum()),
        'wrong_verified_fraction': float(wrong.sum() / n_ok) if n_ok else 0.0,
        'median_inliers_verified': _median(np.asarray(inliers, float)[ok]),
        'ms': stages,
    }


# --- the builder ----------------------------------------------------------------------------
class ReportBuilder:
    """Everything a report holds, gathered frame by frame and method by method.

    ``model``/``meta``/``device``: the evaluated export (the report's ``source`` starts with
    them). ``notes``: the report's notes so far (kept, appended to). Call :meth:`add_frame`
    for each evaluated frame, :meth:`add_method` for each method (the model under test
    first), then :meth:`write`.
    """

    def __init__(self, model, meta: dict, *, device: str, baselines: Baselines | None = None,
                 notes: list[str] | None = None):
        self.model = Path(model)
        self.meta = meta
        self.baselines = baselines or Baselines()
        self.notes = notes if notes is not None else []
        self.source: dict = {'model': str(model), 'model_id': meta.get('model_id'),
                             'backbone': meta.get('backbone'), 'device': device}
        self.methods: dict[str, MethodResult] = {}
        self.sections: dict = {}  # more summary.json sections: verification, live, ...
        self._names: list[str] = []
        self._stamps: list[float] = []
        self._positions: list[np.ndarray] = []
        self._quaternions: list[np.ndarray] = []
        self._features: list[np.ndarray] = []

    @property
    def n_frames(self) -> int:
        """Frames recorded so far."""
        return len(self._names)

    @property
    def model_label(self) -> str:
        """``file (backbone, model_id id)``, for the method descriptions."""
        return (f'{self.model.name} ({self.meta.get("backbone")}, model_id '
                f'{self.meta.get("model_id")})')

    def add_frame(self, sample, frame: np.ndarray) -> None:
        """Record one evaluated frame: its ground truth and, for the NN baseline, its feature.

        ``sample``: the frame's ``PoseSample``; ``frame``: its decoded (H, W, 3) uint8 image.
        """
        self._names.append(sample.name or f'{self.n_frames:06d}')
        self._stamps.append(math.nan if sample.stamp is None else float(sample.stamp))
        self._positions.append(sample.position)
        self._quaternions.append(sample.quaternion)
        if self.baselines.extractor is not None:
            self._features.append(self.baselines.extractor([frame])[0])

    def ground_truth(self) -> GroundTruth:
        """The recorded frames (names, stamps, true poses)."""
        return GroundTruth(list(self._names), np.asarray(self._stamps, np.float64),
                           np.asarray(self._positions, np.float64).reshape(-1, 3),
                           np.asarray(self._quaternions, np.float64).reshape(-1, 4))

    def add_method(self, name: str, result: MethodResult) -> MethodResult:
        """Add one method's predictions on the recorded frames (in their order)."""
        if len(result.positions) != self.n_frames:
            raise EvaluationError(f'method {name!r} has {len(result.positions)} predictions '
                                  f'for {self.n_frames} frames')
        self.methods[name] = result
        return result

    def add_verification(self, name: str, refined: MethodResult, *, coarse: MethodResult,
                         map_path, statuses: list[str], inliers: np.ndarray,
                         stages: dict) -> dict:
        """Add the refined method ``name`` and the ``verification`` section; return the section.

        ``refined.valid`` marks the verified frames; ``coarse``: the poses that were verified.
        """
        self.add_method(name, refined)
        section = verification_summary(coarse, refined, self.ground_truth(), map_path, statuses,
                                       inliers, stages)
        self.sections['verification'] = section
        return section

    def describe_bag(self, bag, stats, image_topic: str | None, max_gap: float) -> None:
        """The bag, its image topic, pose source and frame composition in ``source``.

        ``stats``: the ``BagDataset.stats`` of the pass that read the ground truth.
        """
        self.source.update({'bag': str(bag),
                            'image_topic': stats.image_topic if stats else image_topic,
                            'pose_source': stats.pose_source if stats else ''})
        if stats is None:
            return
        if stats.extrinsic:
            self.source['ground_truth_frames'] = (
                f'{stats.pose_of} poses in {stats.pose_frame} composed with {stats.extrinsic} '
                f'to {stats.camera_frame}')
        if stats.n_no_pose or stats.n_undecodable:
            self.notes.append(f'{stats.n_no_pose} image(s) without ground truth '
                              f'({stats.reasons()}) and '
                              f'{stats.n_undecodable} undecodable image(s) were not evaluated')

    def write(self, out_dir, title: str, show_progress: bool = False) -> dict:
        """Add the baselines on the recorded frames, write the report files; the summary."""
        if not self.n_frames:
            raise EvaluationError('no frame to evaluate')
        if not self.methods:
            raise EvaluationError('no method to report')
        train = self.baselines.train
        if train:
            self.baselines.add_to(self.methods, self._features, self.n_frames, show_progress)
            self.source['baseline_training_set'] = f'{self.baselines.source} ({len(train)} frames)'
        train_pos = np.array([s.position for s in train]) if train else None
        return write_report(out_dir, self.ground_truth(), self.methods, title=title,
                            source=self.source, train_positions=train_pos, notes=self.notes,
                            extra_summary=self.sections)
