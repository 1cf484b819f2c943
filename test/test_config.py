"""Training configuration: merge order, unknown keys, bad values, shipped YAML files, CLI flags."""

from pathlib import Path

import pytest
import yaml

from posenet_ros.core.errors import ConfigError
from posenet_ros.training.config import TrainConfig, config_keys, load_config
from posenet_ros.training.train import main as train_main

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'config'


def _yaml(tmp_path, text: str) -> Path:
    path = tmp_path / 'cfg.yaml'
    path.write_text(text)
    return path


def test_merge_order_defaults_yaml_flags(tmp_path):
    path = _yaml(tmp_path, 'lr: 1e-3\nepochs: 7\nbackbone: resnet18\n')
    cfg = load_config(path, {'epochs': '3', 'augment': False})
    assert cfg.lr == pytest.approx(1e-3)  # from YAML ('1e-3' is a string in YAML 1.1)
    assert cfg.epochs == 3  # flag beats YAML
    assert cfg.backbone == 'resnet18'
    assert cfg.augment is False
    assert cfg.batch_size == TrainConfig().batch_size  # untouched default
    assert load_config(path).epochs == 7


def test_unknown_yaml_key_lists_valid_keys(tmp_path):
    path = _yaml(tmp_path, 'lr: 0.001\nlearning_rate: 0.1\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert 'learning_rate' in msg and str(path) in msg
    assert all(key in msg for key in ('batch_size', 'backbone', 'resume'))
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_config(None, {'epoch': 3})


@pytest.mark.parametrize('key, value, fragment', [
    ('crop', 300, 'crop=300'),
    ('optimizer', 'adamm', 'adam, adamw, sgd'),
    ('lr', -1, 'must be > 0'),
    ('batch_size', 'many', 'expected an integer'),
    ('epochs', None, 'cannot be null'),
    ('augment', 'maybe', 'true or false'),
    ('backbone', 'vgg16', 'efficientnet_lite0'),
    ('dropout', 1.0, '[0, 1)'),
    ('device', 'tpu', 'cuda:N'),
    ('warmup_epochs', 500, 'shorter than epochs'),
    ('name', 'a/b', 'file stem'),
])
def test_bad_values_name_the_key(key, value, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, {key: value})
    assert key in str(err.value) and fragment in str(err.value)


def test_freeze_bn_needs_a_pretrained_trunk():
    assert load_config(None, {'freeze_bn': True}).freeze_bn
    with pytest.raises(ConfigError, match='freeze_bn.*set pretrained'):
        load_config(None, {'freeze_bn': True, 'pretrained': None})


def test_yaml_syntax_and_shape_errors(tmp_path):
    with pytest.raises(ConfigError, match=r'cfg.yaml:2'):
        load_config(_yaml(tmp_path, 'lr: 0.1\nepochs: 3: 4\n'))
    with pytest.raises(ConfigError, match='mapping'):
        load_config(_yaml(tmp_path, '- lr\n- epochs\n'))
    with pytest.raises(ConfigError, match='does not exist'):
        load_config(tmp_path / 'missing.yaml')
    assert load_config(_yaml(tmp_path, '# only comments\n')) == TrainConfig()


def test_null_strings_for_optional_keys():
    cfg = load_config(None, {'val_split': 'none', 'pretrained': 'null'})
    assert cfg.val_split is None and cfg.pretrained is None


def test_default_yaml_documents_every_default():
    path = CONFIG_DIR / 'train_default.yaml'
    data = yaml.safe_load(path.read_text())
    assert list(data) == config_keys()  # every key, in order
    assert load_config(path) == TrainConfig()
    text = path.read_text()
    for key in config_keys():  # each key carries a comment
        line = next(li for li in text.splitlines() if li.startswith(f'{key}:'))
        assert '#' in line or f'# {key}' in text, key


def test_demo_yaml_is_valid_and_cpu_sized():
    cfg = load_config(CONFIG_DIR / 'train_demo_cpu.yaml')
    assert cfg.backbone == 'efficientnet_lite0' and cfg.pretrained == 'imagenet'
    assert cfg.loss == 'learned' and cfg.crop <= 128


def test_cli_flags_override_yaml(tmp_path, capsys):
    path = _yaml(tmp_path, 'epochs: 7\nlr: 0.01\n')
    rc = train_main(['--config', str(path), '--epochs', '2', '--no-augment', '--val-split',
                     'none', '--resume', '--print-config'])
    assert rc == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed['epochs'] == 2 and printed['lr'] == 0.01
    assert printed['augment'] is False and printed['val_split'] is None
    assert printed['resume'] == 'auto'  # bare --resume means <run_dir>/last.pt
    with pytest.raises(ConfigError, match='crop'):
        train_main(['--crop', '999', '--print-config'])
