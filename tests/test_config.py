"""Config dataclasses: validation with named keys, JSON round trip, presets."""
from __future__ import annotations

import json

import pytest

from qca_tf.config import (PRESETS, DataConfig, InferenceConfig, ModelConfig, PostprocessConfig, TrainConfig,
                           from_dict, preset, read_json, to_dict, write_json_atomic)
from qca_tf.errors import ConfigError


@pytest.mark.parametrize("cfg", [ModelConfig(), TrainConfig(optimizer="adam", class_weights=(1.0, 3.0)),
                                 DataConfig(voxel_size=(0.8, 0.8, 1.75), patch=(32, 48, 64)),
                                 PostprocessConfig(min_marker_size=3), InferenceConfig(tile=(32, 32, 32))])
def test_json_round_trip(cfg, tmp_path):
    path = tmp_path / "c.json"
    write_json_atomic(path, to_dict(cfg))
    assert from_dict(type(cfg), read_json(path)) == cfg
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_unknown_key_named():
    with pytest.raises(ConfigError, match=r"model\.dept\b"):
        from_dict(ModelConfig, {"dept": 3}, "model")


@pytest.mark.parametrize("cls,kwargs,key", [
    (ModelConfig, {"depth": 0}, "model.depth"),
    (ModelConfig, {"kernel_size": 4}, "model.kernel_size"),
    (TrainConfig, {"optimizer": "rmsprop"}, "train.optimizer"),
    (TrainConfig, {"lr_decay": 1.5}, "train.lr_decay"),
    (TrainConfig, {"epochs": 0}, "train.epochs"),
    (DataConfig, {"patch": (32, 32)}, "data.patch"),
    (DataConfig, {"voxel_size": (0.8, -1.0, 2.0)}, "data.voxel_size"),
    (PostprocessConfig, {"nsn_threshold": 1.0}, "postprocess.nsn_threshold"),
    (InferenceConfig, {"precision": "float16"}, "inference.precision"),
])
def test_invalid_values_named(cls, kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cls(**kwargs)


def test_presets_and_overrides():
    assert (PRESETS["nsn"].depth, PRESETS["nsn"].init_channels, PRESETS["nsn"].kernel_size) == (2, 16, 3)
    assert (PRESETS["ndn"].depth, PRESETS["ndn"].init_channels, PRESETS["ndn"].kernel_size) == (4, 12, 5)
    assert (PRESETS["unet3d"].depth, PRESETS["unet3d"].init_channels, PRESETS["unet3d"].kernel_size) == (3, 32, 3)
    cfg = preset("ndn", depth=2, init_channels=None)
    assert (cfg.depth, cfg.init_channels, cfg.multiple) == (2, 12, 4)
    with pytest.raises(ConfigError, match="unknown model preset 'vnet'"):
        preset("vnet")


def test_malformed_json_named(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        read_json(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        read_json(bad)
