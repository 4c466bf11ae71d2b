"""Inference: tiled == whole volume, margins cover the receptive field, precision, XLA."""
from __future__ import annotations

import numpy as np
import pytest

import qca_tf  # noqa: F401  (sets the Keras backend)
import keras

from qca_tf import infer
from qca_tf.config import InferenceConfig, ModelConfig
from qca_tf.errors import ConfigError, InputError
from qca_tf.modelio import LoadedModel, load_model_folder, save_model_folder
from qca_tf.models import build_unet, receptive_field_radius, tile_margin

from model_helpers import randomize_bn


def _loaded(cfg: ModelConfig, seed: int = 0) -> LoadedModel:
    keras.utils.set_random_seed(seed)
    model = build_unet(cfg)
    randomize_bn(model, np.random.default_rng(seed))
    return LoadedModel(model, cfg, "nsn", 0.8, folder=None)  # type: ignore[arg-type]


def _volume(shape, seed=1):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _whole(loaded, vol):
    """Reference: the network applied to the end-mirror-padded volume, cropped (no tiling code)."""
    m = loaded.model_cfg.multiple
    pads = [(0, -(-n // m) * m - n) for n in vol.shape]
    padded = np.pad(vol, pads, mode="reflect")
    p = loaded.model(padded[None, ..., None], training=False).numpy()[0, ..., 1]
    return p[: vol.shape[0], : vol.shape[1], : vol.shape[2]]


@pytest.mark.parametrize("cfg,shape,tile,batch", [
    (ModelConfig(depth=1, init_channels=4, kernel_size=3), (29, 38, 35), (8, 8, 8), 3),
    (ModelConfig(depth=2, init_channels=2, kernel_size=3), (13, 10, 71), (8, 8, 8), 2),
])
def test_tiled_equals_whole_volume(cfg, shape, tile, batch):
    loaded = _loaded(cfg)
    vol = _volume(shape)
    whole = infer.predict_probabilities(loaded, vol, InferenceConfig())
    tiled = infer.predict_probabilities(loaded, vol, InferenceConfig(tile=tile, batch_size=batch))
    assert whole.shape == tiled.shape == shape and whole.dtype == tiled.dtype == np.float32
    np.testing.assert_allclose(whole, _whole(loaded, vol), atol=1e-5)
    np.testing.assert_allclose(tiled, whole, atol=1e-3)
    assert 0.05 < whole.std()  # a non-trivial map, so equality means something


def test_tiles_are_smaller_than_volume_and_cover_it():
    """The tiled test above really tiles: inputs smaller than the volume, cores partition it."""
    cfg = ModelConfig(depth=1, init_channels=4, kernel_size=3)
    margin = tile_margin(cfg)
    tiles = infer.plan_tiles((30, 38, 36), (8, 8, 8), margin, cfg.multiple)
    count = np.zeros((30, 38, 36), int)
    for inp, in_core, vol_core in tiles:
        assert all(s.start % cfg.multiple == 0 for s in inp + vol_core)
        count[vol_core] += 1
        for i, c, v, n in zip(inp, in_core, vol_core, (30, 38, 36)):
            assert i.stop - i.start < n
            assert i.start + c.start == v.start and c.stop - c.start == v.stop - v.start
            # the full margin of context on each side, unless clipped at the volume border
            assert v.start - i.start == min(margin, v.start) and i.stop - v.stop == min(margin, n - v.stop)
    assert count.min() >= 1
    assert len(tiles) == 4 * 5 * 5


def test_memory_budget_tiles_equal_whole():
    cfg = ModelConfig(depth=1, init_channels=4, kernel_size=3)
    loaded = _loaded(cfg, seed=3)
    vol = _volume((30, 36, 34), seed=4)
    whole_bytes = infer.estimate_memory_bytes(cfg, (30, 36, 36))
    assert infer._choose_core(cfg, (30, 36, 36), InferenceConfig(), tile_margin(cfg), 4) is None
    small = InferenceConfig(max_memory_gb=whole_bytes / 2 / 2**30)
    core = infer._choose_core(cfg, (30, 36, 36), small, tile_margin(cfg), 4)
    assert core is not None and all(c % 2 == 0 for c in core)
    tiled = infer.predict_probabilities(loaded, vol, small)
    np.testing.assert_allclose(tiled, _whole(loaded, vol), atol=1e-3)


def test_margin_covers_receptive_field():
    for cfg in (ModelConfig(depth=d, kernel_size=k) for d in (1, 2, 3, 4) for k in (3, 5)):
        assert tile_margin(cfg) >= receptive_field_radius(cfg)
        assert tile_margin(cfg) % cfg.multiple == 0
        assert tile_margin(cfg) - receptive_field_radius(cfg) < cfg.multiple


def test_output_shape_odd_sizes():
    loaded = _loaded(ModelConfig(depth=2, init_channels=2))
    for shape in [(5, 7, 9), (1, 3, 2), (17, 4, 11)]:
        out = infer.predict_probabilities(loaded, _volume(shape), InferenceConfig())
        assert out.shape == shape and out.dtype == np.float32
        assert np.all((out >= 0) & (out <= 1))


def test_bad_volume():
    loaded = _loaded(ModelConfig(depth=1, init_channels=2))
    with pytest.raises(InputError, match="3D"):
        infer.predict_probabilities(loaded, np.zeros((4, 4)), InferenceConfig())


def test_resolve_precision_cpu():
    assert infer.resolve_precision("auto") == "float32"
    assert infer.resolve_precision("float32") == "float32"
    assert infer.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    with pytest.raises(ConfigError, match="mixed_float16 needs a GPU"):
        infer.resolve_precision("mixed_float16")
    with pytest.raises(ConfigError, match="unknown precision 'float64'; choose one of auto, float32"):
        infer.resolve_precision("float64")


def test_mixed_bfloat16_close_to_float32(tmp_path):
    cfg = ModelConfig(depth=1, init_channels=4)
    loaded = _loaded(cfg, seed=5)
    save_model_folder(tmp_path / "m", loaded.model, task="nsn", model_cfg=cfg, spacing_um=0.8)
    vol = _volume((12, 16, 14), seed=6)
    f32 = infer.predict_probabilities(load_model_folder(tmp_path / "m"), vol, InferenceConfig())
    bf = infer.load_for_inference(tmp_path / "m", InferenceConfig(precision="mixed_bfloat16"))
    assert bf.model.get_layer("enc0a_conv").compute_dtype == "bfloat16" and bf.precision == "mixed_bfloat16"
    b16 = infer.predict_probabilities(bf, vol, InferenceConfig())
    assert b16.dtype == np.float32
    np.testing.assert_allclose(b16, f32, atol=2e-2)
    assert np.abs(b16 - f32).max() > 0  # really ran in reduced precision


def test_jit_matches_eager_graph():
    loaded = _loaded(ModelConfig(depth=2, init_channels=2), seed=7)
    vol = _volume((15, 12, 10), seed=8)
    a = infer.predict_probabilities(loaded, vol, InferenceConfig(jit=False, tile=(8, 8, 8)))
    b = infer.predict_probabilities(loaded, vol, InferenceConfig(jit=True, tile=(8, 8, 8)))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_tile_shapes_do_not_retrace():
    loaded = _loaded(ModelConfig(depth=1, init_channels=2), seed=9)
    vol = _volume((30, 30, 30), seed=10)
    infer.predict_probabilities(loaded, vol, InferenceConfig(tile=(8, 8, 8)))
    infer.predict_probabilities(loaded, _volume((26, 31, 29)), InferenceConfig(tile=(8, 8, 8)))
    (fn,) = loaded.forward_cache.values()
    # many distinct tile shapes, one trace (dynamic input signature)
    assert fn.experimental_get_tracing_count() == 1


def _d4(vol: np.ndarray, turns: int, flip_x: bool) -> np.ndarray:
    """A (z, y, x) volume turned in yx and flipped in x, written with transposes (not np.rot90)."""
    for _ in range(turns % 4):  # one quarter turn: new[y', x'] = old[x', Y - 1 - y']
        vol = np.transpose(vol, (0, 2, 1))[:, ::-1, :]
    return vol[:, :, ::-1] if flip_x else vol


def test_tta_is_the_mean_over_transforms_and_equivariant():
    """tta=8 averages the network over the 8 xy transforms (each turned back): the result
    equals that mean computed independently, and it commutes with every one of those
    transforms (y != x, so a transpose mix-up shows); tta=4 commutes with the flips."""
    loaded = _loaded(ModelConfig(depth=1, init_channels=4, kernel_size=3))
    vol = _volume((6, 10, 14))  # multiples of 2: no padding, so the transforms commute exactly
    plain = infer.predict_probabilities(loaded, vol, InferenceConfig())
    tta8 = infer.predict_probabilities(loaded, vol, InferenceConfig(tta=8))
    assert tta8.shape == vol.shape and tta8.dtype == np.float32
    ops = [(t, f) for t in range(4) for f in (False, True)]
    # the inverse of a quarter turn is three more; the inverse of (turn, then flip) is (flip, then turn back)
    reference = np.mean([_d4(_d4(_whole(loaded, np.ascontiguousarray(_d4(vol, t, f))), 0, f), 4 - t, False)
                         for t, f in ops], axis=0)
    np.testing.assert_allclose(tta8, reference, atol=1e-5)
    assert np.abs(tta8 - plain).max() > 0.01  # the random network is not symmetric: averaging changes it
    for t, f in ops:
        moved = infer.predict_probabilities(loaded, np.ascontiguousarray(_d4(vol, t, f)), InferenceConfig(tta=8))
        np.testing.assert_allclose(moved, _d4(tta8, t, f), atol=1e-5)
    tta4 = infer.predict_probabilities(loaded, vol, InferenceConfig(tta=4))
    for t, f in [(0, True), (2, False), (2, True)]:
        moved = infer.predict_probabilities(loaded, np.ascontiguousarray(_d4(vol, t, f)), InferenceConfig(tta=4))
        np.testing.assert_allclose(moved, _d4(tta4, t, f), atol=1e-5)
    assert np.abs(tta4 - tta8).max() > 1e-3


def test_tta_tiled_equals_whole():
    loaded = _loaded(ModelConfig(depth=1, init_channels=4, kernel_size=3))
    vol = _volume((11, 19, 26))
    whole = infer.predict_probabilities(loaded, vol, InferenceConfig(tta=8))
    tiled = infer.predict_probabilities(loaded, vol, InferenceConfig(tta=8, tile=(8, 8, 8), batch_size=2))
    np.testing.assert_allclose(tiled, whole, atol=1e-3)


def test_tta_choices():
    with pytest.raises(ConfigError, match="tta"):
        InferenceConfig(tta=2)
