"""Tests of qca_tf.io: TIFF round trips, voxel-size metadata, time series, dataset pairing."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from qca_tf.errors import InputError, OutputError
from qca_tf.io import (Sample, TimePoint, VoxelSize, find_dataset, natural_key, read_series, read_stack,
                       read_voxel_size, voxel_size_of, write_stack)

RNG = np.random.default_rng(0)


def _volume(dtype, shape=(5, 6, 7)) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return RNG.random(shape).astype(dtype)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


# --------------------------------------------------------------------------- VoxelSize


def test_voxel_size_fields_and_zyx():
    v = VoxelSize.from_xyz([0.8, 0.7, 1.75])
    assert (v.x, v.y, v.z) == (0.8, 0.7, 1.75)
    assert v.zyx == (1.75, 0.7, 0.8)
    assert isinstance(VoxelSize(1, 2, 3).x, float)


@pytest.mark.parametrize("xyz", [(0, 1, 1), (1, -2, 1), (1, 1, float("nan")), (1, float("inf"), 1), (1, 1, "a")])
def test_voxel_size_rejects_bad_values(xyz):
    with pytest.raises(InputError, match="voxel size"):
        VoxelSize(*xyz)


def test_voxel_size_from_xyz_needs_three():
    with pytest.raises(InputError, match="three numbers"):
        VoxelSize.from_xyz([1.0, 2.0])


# --------------------------------------------------------------------------- write/read round trip


@pytest.mark.parametrize("dtype,shape", [(np.uint8, (5, 6, 7)), (np.uint16, (5, 6, 7)), (np.float32, (5, 6, 7)),
                                         (np.uint8, (3, 6, 7)), (np.uint8, (5, 6, 3))])  # not taken for RGB/channels
def test_round_trip_array_and_voxel_size(tmp_path, dtype, shape):
    data = _volume(dtype, shape)
    size = VoxelSize(0.8, 0.7, 1.75)
    out = tmp_path / "sub" / "dir" / "stack.tif"  # parents are created
    write_stack(out, data, size)
    back = read_stack(out)
    assert back.dtype == data.dtype
    np.testing.assert_array_equal(back, data)
    assert read_voxel_size(out) == size
    # ImageJ-readable scale: ImageJ description with spacing and unit, resolution in pixels per um
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.imagej_metadata["spacing"] == pytest.approx(1.75)
        num, den = tif.pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(1 / 0.8)
    assert [p.name for p in out.parent.iterdir()] == ["stack.tif"]  # no temp file left behind


def test_write_without_voxel_size_has_none(tmp_path):
    data = _volume(np.uint16)
    write_stack(tmp_path / "a.tif", data)
    np.testing.assert_array_equal(read_stack(tmp_path / "a.tif"), data)
    assert read_voxel_size(tmp_path / "a.tif") is None


def test_write_converts_labels_and_bool(tmp_path):
    labels = np.zeros((4, 5, 6), np.int64)
    labels[1, 2, 3] = 65535
    labels[2, 2, 2] = 7
    write_stack(tmp_path / "l.tif", labels)
    back = read_stack(tmp_path / "l.tif")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    mask = labels > 0
    write_stack(tmp_path / "m.tif", mask)
    back = read_stack(tmp_path / "m.tif")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask.astype(np.uint8))


def test_write_rejects_labels_beyond_uint16(tmp_path):
    labels = np.zeros((4, 5, 6), np.int32)
    labels[0, 0, 0] = 65536
    with pytest.raises(OutputError, match="l.tif.*65536"):
        write_stack(tmp_path / "l.tif", labels)
    assert not list(tmp_path.iterdir())


def test_write_unwritable_location(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    target = blocker / "out.tif"
    with pytest.raises(OutputError, match="out.tif"):
        write_stack(target, np.zeros((3, 4, 5), np.uint8))


def test_write_replaces_existing_file(tmp_path):
    out = tmp_path / "a.tif"
    write_stack(out, np.zeros((3, 4, 5), np.uint8))
    write_stack(out, np.full((3, 4, 5), 9, np.uint8))
    assert read_stack(out).max() == 9


# --------------------------------------------------------------------------- read_stack errors


def test_read_squeezes_singleton_axes(tmp_path):
    data = _volume(np.uint16)
    tifffile.imwrite(tmp_path / "h.tif", data[None, :, None], imagej=True, metadata={"axes": "TZCYX"})
    back = read_stack(tmp_path / "h.tif")
    assert back.shape == data.shape
    np.testing.assert_array_equal(back, data)


def test_read_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.tif: file not found"):
        read_stack(tmp_path / "nope.tif")


def test_read_not_a_tiff(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"this is not a TIFF file at all")
    with pytest.raises(InputError, match="bad.tif: not a readable TIFF"):
        read_stack(bad)


def test_read_2d(tmp_path):
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((6, 7), np.uint8))
    with pytest.raises(InputError, match=r"flat.tif: is 2D \(Y x X\); expected a 3D stack \(z, y, x\)"):
        read_stack(tmp_path / "flat.tif")


def test_read_4d_and_5d(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((2, 5, 6, 7), np.uint8))
    with pytest.raises(InputError, match="t.tif: is 4D.*expected a 3D stack"):
        read_stack(tmp_path / "t.tif")
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((2, 5, 2, 6, 7), np.uint8), imagej=True)
    with pytest.raises(InputError, match="f.tif: is 5D"):
        read_stack(tmp_path / "f.tif")


def test_read_nan(tmp_path):
    data = _volume(np.float32)
    data[1, 2, 3] = np.nan
    tifffile.imwrite(tmp_path / "n.tif", data)
    with pytest.raises(InputError, match="n.tif: contains NaN voxels"):
        read_stack(tmp_path / "n.tif")


def test_read_zero_size(tmp_path):
    with pytest.warns(UserWarning):
        tifffile.imwrite(tmp_path / "z.tif", np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(InputError, match="z.tif: is empty"):
        read_stack(tmp_path / "z.tif")


# --------------------------------------------------------------------------- voxel size metadata


@pytest.mark.parametrize("unit,scale", [("micron", 1.0), ("\\u00B5m", 1.0), ("nm", 1e-3), ("mm", 1e3)])
def test_imagej_units(tmp_path, unit, scale):
    path = tmp_path / "u.tif"
    tifffile.imwrite(path, _volume(np.uint8), imagej=True, resolution=(1 / 0.5, 1 / 0.25),
                     metadata={"spacing": 2.0, "unit": unit, "axes": "ZYX"})
    size = read_voxel_size(path)
    assert (size.x, size.y, size.z) == pytest.approx((0.5 * scale, 0.25 * scale, 2.0 * scale))


def test_imagej_without_unit_or_spacing_is_none(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", _volume(np.uint8), imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 2.0, "axes": "ZYX"})
    assert read_voxel_size(tmp_path / "a.tif") is None  # resolution without a unit is not trusted
    tifffile.imwrite(tmp_path / "b.tif", _volume(np.uint8), imagej=True, resolution=(2.0, 2.0),
                     metadata={"unit": "um", "axes": "ZYX"})
    assert read_voxel_size(tmp_path / "b.tif") is None  # z unknown
    tifffile.imwrite(tmp_path / "c.tif", _volume(np.uint8))
    assert read_voxel_size(tmp_path / "c.tif") is None  # plain tifffile output (resolution 1/1)


def test_ome_physical_sizes(tmp_path):
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, _volume(np.uint16), metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.8, "PhysicalSizeY": 0.6, "PhysicalSizeZ": 1750, "PhysicalSizeZUnit": "nm"})
    size = read_voxel_size(path)
    assert (size.x, size.y, size.z) == pytest.approx((0.8, 0.6, 1.75))
    partial = tmp_path / "b.ome.tif"
    tifffile.imwrite(partial, _volume(np.uint16), metadata={"axes": "ZYX", "PhysicalSizeX": 0.8, "PhysicalSizeY": 0.8})
    assert read_voxel_size(partial) is None


def test_voxel_size_of(tmp_path):
    with_meta, without = tmp_path / "a.tif", tmp_path / "b.tif"
    write_stack(with_meta, _volume(np.uint8), VoxelSize(0.8, 0.8, 1.75))
    write_stack(without, _volume(np.uint8))
    override = VoxelSize(1, 1, 2)
    assert voxel_size_of(with_meta, override) == override
    assert voxel_size_of(with_meta, None) == VoxelSize(0.8, 0.8, 1.75)
    with pytest.raises(InputError, match=r"b.tif: no voxel size in the file's metadata; give it with --voxel-size X Y Z"):
        voxel_size_of(without, None)


# --------------------------------------------------------------------------- time series


def test_natural_key():
    names = ["t10.tif", "t2.tif", "t1.tif", "T3.tif", "a.tif"]
    assert sorted(names, key=natural_key) == ["a.tif", "t1.tif", "t2.tif", "T3.tif", "t10.tif"]


def test_series_3d_file(tmp_path):
    data = _volume(np.uint16)
    write_stack(tmp_path / "emb.tif", data)
    series = read_series(tmp_path / "emb.tif")
    assert series == [TimePoint("emb", tmp_path / "emb.tif", None)]
    np.testing.assert_array_equal(series[0].load(), data)


@pytest.mark.parametrize("imagej,n_z", [(True, 5), (False, 5), (False, 3)])
def test_series_4d_file(tmp_path, imagej, n_z):
    data = _volume(np.uint16, (3, n_z, 6, 7))
    path = tmp_path / "movie.tif"
    if imagej:
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX"})
    elif n_z == 3:  # plain 4D array stored with z as RGB sample planes: still taken as (t, z, y, x)
        tifffile.imwrite(path, data, photometric="rgb", planarconfig="separate")
    else:  # plain 4D array: taken as (t, z, y, x)
        tifffile.imwrite(path, data)
    series = read_series(path)
    assert [tp.name for tp in series] == ["movie_t0000", "movie_t0001", "movie_t0002"]
    assert [tp.index for tp in series] == [0, 1, 2]
    for i, tp in enumerate(series):
        np.testing.assert_array_equal(tp.load(), data[i])


def test_series_4d_reads_only_its_frame(tmp_path, monkeypatch):
    data = _volume(np.float32, (3, 5, 6, 7))
    data[0, 0, 0, 0] = np.nan  # a bad frame 0 does not stop frame 2 from loading
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX"})
    series = read_series(path)

    def whole_series(*args, **kwargs):
        raise AssertionError("read the whole series")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", whole_series)
    np.testing.assert_array_equal(series[2].load(), data[2])
    with pytest.raises(InputError, match=r"movie.tif \(time point 0\): contains NaN"):
        series[0].load()


def test_series_folder_natural_order(tmp_path):
    vols = {name: _volume(np.uint8) for name in ("t10", "t2", "t1")}
    for name, v in vols.items():
        write_stack(tmp_path / f"{name}.tif", v)
    (tmp_path / "notes.txt").write_text("ignored")
    series = read_series(tmp_path)
    assert [tp.name for tp in series] == ["t1", "t2", "t10"]
    for tp in series:
        assert tp.index is None
        np.testing.assert_array_equal(tp.load(), vols[tp.name])


def test_series_errors(tmp_path):
    with pytest.raises(InputError, match="missing: no such file or folder"):
        read_series(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: folder holds no TIFF"):
        read_series(tmp_path / "empty")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((6, 7), np.uint8))
    with pytest.raises(InputError, match="flat.tif: is 2D"):
        read_series(tmp_path / "flat.tif")
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((2, 5, 2, 6, 7), np.uint8), imagej=True)
    with pytest.raises(InputError, match="five.tif: is 5D"):
        read_series(tmp_path / "five.tif")
    tifffile.imwrite(tmp_path / "chan.tif", np.zeros((5, 2, 6, 7), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InputError, match="chan.tif: is 4D with axes ZCYX .*expected a one-channel time series TZYX"):
        read_series(tmp_path / "chan.tif")
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_stack(folder / "a.tif", np.zeros((3, 4, 5), np.uint8))
    tifffile.imwrite(folder / "b.tif", np.zeros((4, 5), np.uint8))
    with pytest.raises(InputError, match="b.tif: is 2D"):
        read_series(folder)


# --------------------------------------------------------------------------- datasets


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_stack(folder / name, np.zeros((2, 3, 4), np.uint8))


def test_find_dataset_layout_a(tmp_path):
    _touch(tmp_path / "images", "e10.tif", "e2.tif", "e1.tiff")
    _touch(tmp_path / "nsn", "e1.tif", "e2.tif", "e10.tif")
    _touch(tmp_path / "ndn", "e2.tif")
    samples = find_dataset(tmp_path)
    assert [s.name for s in samples] == ["e1", "e2", "e10"]
    assert samples[0] == Sample("e1", tmp_path / "images" / "e1.tiff", tmp_path / "nsn" / "e1.tif", None, None)
    assert samples[1].ndn == tmp_path / "ndn" / "e2.tif"
    assert samples[2].ndn is None and samples[2].labels is None


def test_find_dataset_layout_b(tmp_path):
    _touch(tmp_path / "images_raw", "a.tif", "b.tif")
    _touch(tmp_path / "images_nsn", "a.tif", "b.tif")
    _touch(tmp_path / "images_ndn", "b.tif")
    samples = find_dataset(tmp_path)
    assert samples == [
        Sample("a", tmp_path / "images_raw" / "a.tif", tmp_path / "images_nsn" / "a.tif", None, None),
        Sample("b", tmp_path / "images_raw" / "b.tif", tmp_path / "images_nsn" / "b.tif",
               tmp_path / "images_ndn" / "b.tif", None),
    ]


def test_find_dataset_errors(tmp_path):
    with pytest.raises(InputError, match="nowhere: dataset folder not found"):
        find_dataset(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no images folder; expected images/ or images_raw/"):
        find_dataset(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match="images: holds no TIFF"):
        find_dataset(tmp_path)
    _touch(tmp_path / "images", "a.tif")
    _touch(tmp_path / "labels", "a.tif", "stray.tif")
    with pytest.raises(InputError, match=f"stray.tif: no matching image in {tmp_path / 'images'}"):
        find_dataset(tmp_path)
    os.remove(tmp_path / "labels" / "stray.tif")
    assert find_dataset(tmp_path)[0].labels == tmp_path / "labels" / "a.tif"
