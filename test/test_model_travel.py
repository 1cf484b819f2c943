"""A model and its map travel together: dataset paths, installed models, the int8 model's map.

* The export records its training set absolute and relative to itself; ``posenet-ros map``
  finds it from any working directory, in a moved project folder, and in older exports that
  hold one relative path; when nothing resolves, the error names every place tried.
* ``setup.py`` installs each model with its map; a model started from the installed share, or
  from a models folder given to the launch file, starts with its map under the default
  ``refine: request`` (real ``pip install`` into a temporary prefix, real node processes).
* ``posenet-ros quantize`` writes the int8 model's map beside it, and the int8 model starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_model import make_tiny_export
from helpers_package import setup_py_arguments

from posenet_ros.core.errors import MapBuildError
from posenet_ros.model.export import META_NAME, read_metadata
from posenet_ros.model.paths import dataset_record, recorded_dataset, recorded_dataset_candidates
from posenet_ros.verify.build import build_map
from posenet_ros.verify.mapfile import default_map_path, load_map

ROOT = Path(__file__).resolve().parents[1]


def _with_training(model: Path, out: Path, **training) -> Path:
    """A copy of the export ``model`` at ``out`` whose metadata's training keys are replaced."""
    extra = {META_NAME: ''}
    module = torch.jit.load(str(model), _extra_files=extra)
    meta = json.loads(extra[META_NAME])
    meta['training'] = {k: v for k, v in {**meta['training'], **training}.items()
                        if v is not None}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(out), _extra_files={META_NAME: json.dumps(meta)})
    return out


def test_dataset_is_recorded_absolute_and_relative_to_the_export(tmp_path, monkeypatch):
    project = tmp_path / 'project'
    (project / 'data' / 'scene').mkdir(parents=True)
    monkeypatch.chdir(project)
    record = dataset_record('data/scene', 'models')
    assert record == {'dataset': str(project / 'data' / 'scene'),
                      'dataset_relative': os.path.join('..', 'data', 'scene')}
    meta = {'training': record}
    model = project / 'models' / 'scene.ts'
    monkeypatch.chdir(tmp_path)  # another working directory
    assert recorded_dataset(meta, model) == project / 'data' / 'scene'
    # the project moved: the absolute path is gone, the one relative to the export is not
    moved = tmp_path / 'moved'
    project.rename(moved)
    assert recorded_dataset(meta, moved / 'models' / 'scene.ts').resolve() == \
        moved / 'data' / 'scene'
    assert recorded_dataset(meta, model) is None


def test_older_exports_with_one_relative_path(tmp_path, monkeypatch):
    (tmp_path / 'runs' / 'demo' / 'data' / 'dataset').mkdir(parents=True)
    meta = {'training': {'dataset': 'runs/demo/data/dataset'}}
    model = tmp_path / 'models' / 'demo.ts'
    monkeypatch.chdir(tmp_path)  # where training ran: the path works as it is
    assert recorded_dataset(meta, model) == Path('runs/demo/data/dataset')
    monkeypatch.chdir(tmp_path / 'runs')  # elsewhere: found from the folder above models/
    assert recorded_dataset(meta, model) == tmp_path / 'runs' / 'demo' / 'data' / 'dataset'
    assert recorded_dataset({'training': {'dataset': 'nowhere'}}, model) is None
    assert recorded_dataset({}, model) is None and recorded_dataset_candidates({}, model) == []


def test_map_without_a_usable_dataset_names_the_places_tried(tmp_path, monkeypatch):
    model = make_tiny_export(tmp_path / 'models', training={'dataset': 'runs/demo/data/set'})
    monkeypatch.chdir(tmp_path / 'models')
    with pytest.raises(MapBuildError) as err:
        build_map(model, progress=False)
    text = str(err.value)
    assert 'runs/demo/data/set' in text and str(tmp_path / 'runs' / 'demo' / 'data' / 'set') \
        in text and '--dataset' in text, text


def test_setup_py_installs_each_model_with_its_map(tmp_path):
    pkg = _package_copy(tmp_path / 'pkg', {})
    for name in ('scene.ts', 'scene.map.npz', 'scene.int8.ts', 'scene.int8.map.npz'):
        (pkg / 'models' / name).touch()
    data = setup_py_arguments(pkg)['data_files']['share/posenet_ros/models']
    assert {f'models/{n}' for n in ('scene.ts', 'scene.map.npz', 'scene.int8.ts',
                                    'scene.int8.map.npz')} <= set(data), data


def _package_copy(dest: Path, models: dict[str, Path]) -> Path:
    """The files setup.py installs (package data, no Python modules) with ``models`` in it."""
    dest.mkdir(parents=True)
    for name in ('setup.py', 'setup.cfg', 'package.xml'):
        shutil.copy(ROOT / name, dest / name)
    for folder in ('resource', 'launch', 'config'):
        shutil.copytree(ROOT / folder, dest / folder)
    (dest / 'posenet_ros').mkdir()
    (dest / 'posenet_ros' / '__init__.py').write_text('')  # the modules come from the worktree
    (dest / 'models').mkdir()
    for name, path in models.items():
        shutil.copy(path, dest / 'models' / name)
    return dest


def _launch_module():
    spec = importlib.util.spec_from_file_location('relocalize_launch',
                                                  ROOT / 'launch' / 'relocalize.launch.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_map_command_in_a_moved_project_from_another_directory(scene_model, tmp_path,
                                                               monkeypatch):
    meta = read_metadata(scene_model.model)['training']
    assert Path(meta['dataset']).is_absolute() and Path(meta['dataset']) == \
        Path(scene_model.dataset).resolve()
    assert meta['dataset_relative'] == os.path.relpath(Path(scene_model.dataset).resolve(),
                                                       scene_model.model.parent.resolve())
    # A project folder moved elsewhere: its old absolute path is gone, models/ and data/ moved
    # together.
    project = tmp_path / 'moved'
    (project / 'data').mkdir(parents=True)
    (project / 'data' / 'scene').symlink_to(Path(scene_model.dataset).resolve())
    model = _with_training(scene_model.model, project / 'models' / 'scene.ts',
                           dataset=str(tmp_path / 'gone' / 'scene'),
                           dataset_relative=os.path.join('..', 'data', 'scene'))
    monkeypatch.chdir(tmp_path)
    from posenet_ros.cli import main

    assert main(['map', '--model', str(model), '--quiet']) == 0
    built = load_map(default_map_path(model))
    assert built.model_id == read_metadata(model)['model_id']
    assert built.n_frames == scene_model.cfg.n_train


@pytest.mark.slow
@pytest.mark.ros
def test_installed_and_int8_models_start_with_their_maps(scene_model, tmp_path):
    """The int8 map from quantize; installed and models_dir models start with their maps."""
    pytest.importorskip('rclpy')
    from ros_helpers import RosSession

    from posenet_ros.model.quantize import main as quantize

    models = tmp_path / 'models'  # a models folder given to the launch file
    models.mkdir()
    shutil.copy(scene_model.model, models / 'scene.ts')
    shutil.copy(scene_model.map, models / 'scene.map.npz')
    assert quantize([str(models / 'scene.ts'), '--dataset', str(scene_model.dataset),
                     '--frames', '8', '--eval-frames', '0']) == 0
    int8_map = load_map(models / 'scene.int8.map.npz')
    fp32_map = load_map(models / 'scene.map.npz')
    assert int8_map.model_id == read_metadata(models / 'scene.int8.ts')['model_id']
    assert int8_map.header['derived_from']['model_id'] == fp32_map.model_id
    assert (int8_map.points == fp32_map.points).all()

    pkg = _package_copy(tmp_path / 'pkg', {p.name: p for p in models.iterdir()})
    prefix = tmp_path / 'prefix'
    # --ignore-installed: without it pip uninstalls the venv's own (editable) posenet_ros before
    # installing into the prefix, and every later test's child process loses the package.
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index',
                    '--no-build-isolation', '--ignore-installed', '--quiet', '--prefix',
                    str(prefix), str(pkg)],
                   check=True, cwd=tmp_path, capture_output=True)
    share = prefix / 'share' / 'posenet_ros'
    still = subprocess.run([sys.executable, '-c', 'import posenet_ros'], cwd=tmp_path,
                           capture_output=True, text=True)
    assert still.returncode == 0, "installing into a prefix removed the venv's posenet_ros"
    launch = _launch_module()
    started = {  # what the launch file hands the node as model_path
        'share_int8': launch.resolve_model('scene.int8.ts', '', str(share)),
        'models_dir_fp32': launch.resolve_model('scene.ts', str(models), str(share)),
    }
    assert started['share_int8'] == str(share / 'models' / 'scene.int8.ts')
    with RosSession('posenet_model_travel') as s:
        nodes = {tag: s.start_node({'model_path': path, 'device': 'cpu', 'num_threads': 1,
                                    'warmup_iterations': 1}, tag=tag,
                                   extra_args=('-r', f'__ns:=/{tag}'))
                 for tag, path in started.items()}
        for tag, node in nodes.items():
            assert node.wait_for_output('ready: model', 180), node.tail()
            expected = default_map_path(started[tag])
            assert f'loaded scene map {expected}' in node.output(), node.tail()
            assert 'refine request' in node.output(), node.tail()
