"""A scene map for another export of the same scene (``posenet-ros quantize`` writes one).

A map's geometry (local keypoints, descriptors, triangulated points, frame poses) comes from the
posed images alone; only the frames' retrieval features come from the network. A second export
of the same scene, such as the int8 copy of an fp32 model, therefore gets its map by recomputing
those features with its own network pass: its query features then live in the same space as the
map's. Sharing the fp32 map as it is would compare int8 query features with fp32 map features;
on the test courtyard that verified 15 and 20 of 24 held-out frames (two seeds) where the int8
model's own map verified 20 and 21 (docs/quantization.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import MapBuildError
from posenet_ros.verify.mapfile import SceneMap, default_map_path, load_map, save_map

__all__ = ['derive_map']


def _map_frames(scene_map: SceneMap, dataset, dataset_kind: str) -> tuple[list, str]:
    """The map's frames, in the map's order, from ``dataset`` or the one its header records."""
    from posenet_ros.datasets import load_dataset

    source = dataset or scene_map.header.get('dataset')
    split = scene_map.header.get('split') or 'train'
    if not source or not Path(source).exists():
        raise MapBuildError(
            f'the frames of map {scene_map.path} ({source!r}, {split} split) are not here; pass '
            'the dataset they come from (posenet-ros quantize --dataset, or build the map with '
            "'posenet-ros map --model MODEL --dataset DIR')")
    by_name = {s.name: s for s in load_dataset(source, split, kind=dataset_kind)}
    names = list(scene_map.header.get('frame_names') or [])
    missing = [n for n in names if n not in by_name]
    if missing or len(names) != scene_map.n_frames:
        raise MapBuildError(
            f'{source} ({split} split) lacks {len(missing)} of the {scene_map.n_frames} frames '
            f'of map {scene_map.path} (first: {missing[:1]}); pass the dataset the map was '
            "built from, or build a new map with 'posenet-ros map --model MODEL'")
    return [by_name[n] for n in names], str(source)


def derive_map(model, source_map, out=None, *, dataset=None, dataset_kind: str = 'auto',
               device: str = 'cpu') -> tuple[Path, dict]:
    """Write the map of ``source_map`` for the export ``model``; returns ``(path, header)``.

    Same frames, points and descriptors; the retrieval features are ``model``'s own, and the
    header names ``model``'s id (``derived_from`` keeps the source map's). ``out`` defaults to
    ``<model stem>.map.npz`` beside the export; ``dataset``: where the map's frames are
    (default: the dataset its header records). The frames' poses must match the map's
    fingerprint. Written atomically.
    """
    from posenet_ros.datasets import load_image
    from posenet_ros.verify.build import _feature_model, _open_model
    from posenet_ros.verify.mapfile import frames_fingerprint

    t0 = time.perf_counter()
    model, meta = _open_model(model)
    src = source_map if isinstance(source_map, SceneMap) else load_map(source_map)
    out = Path(out) if out else default_map_path(model)
    frame_global = src.frame_global
    source = src.header.get('dataset')
    if src.frame_global.size:
        samples, source = _map_frames(src, dataset, dataset_kind)
        if frames_fingerprint([s.name for s in samples], np.stack([s.position for s in samples])
                              ) != src.header.get('frames_fingerprint'):
            raise MapBuildError(f'the poses of the frames in {source} are not those map '
                                f'{src.path} was built from; build a new map with '
                                f"'posenet-ros map --model {model}'")
        reloc = _feature_model(model, device, True)
        if reloc is None or reloc.feature_dim != src.frame_global.shape[1]:
            raise MapBuildError(f'{model} gives no {src.frame_global.shape[1]}-d retrieval '
                                f"feature like map {src.path}'s; build its own map with "
                                f"'posenet-ros map --model {model}'")
        frame_global = np.stack([reloc.predict(load_image(s)).feature for s in samples]
                                ).astype(np.float16)
    header = dict(src.header, model_id=str(meta['model_id']), model_file=model.name,
                  backbone=meta.get('backbone'), dataset=source,
                  derived_from={'map': src.path.name if src.path else None,
                                'model_id': src.model_id,
                                'features_s': round(time.perf_counter() - t0, 3)})
    derived = SceneMap(header=header, frame_position=src.frame_position,
                       frame_quaternion=src.frame_quaternion, frame_K=src.frame_K,
                       frame_size=src.frame_size, frame_global=frame_global,
                       frame_offsets=src.frame_offsets, obs_xy=src.obs_xy, obs_desc=src.obs_desc,
                       obs_point=src.obs_point, points=src.points, point_views=src.point_views)
    save_map(derived, out)
    return out, header
