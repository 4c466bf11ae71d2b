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
    with pytest.raises(InputError, match=r"five.tif: has 2 channels \(0, 1\); choose the nuclear channel with --channel"):
        read_series(tmp_path / "five.tif")
    tifffile.imwrite(tmp_path / "plain5.tif", np.zeros((2, 5, 2, 6, 7), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match="plain5.tif: is 5D without axis metadata"):
        read_series(tmp_path / "plain5.tif")
    tifffile.imwrite(tmp_path / "chan.tif", np.zeros((5, 2, 6, 7), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InputError, match=r"chan.tif: has 2 channels \(0, 1\); choose the nuclear channel"):
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


# --------------------------------------------------------------------------- axes and channels


def _coded(shape_tzc: tuple[int, int, int], yx=(6, 7)) -> np.ndarray:
    """(t, z, c, y, x) uint16 whose every plane holds 1000*t + 10*c + z: axes can be told apart."""
    n_t, n_z, n_c = shape_tzc
    t, z, c = np.meshgrid(np.arange(n_t), np.arange(n_z), np.arange(n_c), indexing="ij")
    return np.broadcast_to((1000 * t + 10 * c + z)[..., None, None].astype(np.uint16), (*shape_tzc, *yx)).copy()


def _write_hyperstack(path: Path, coded: np.ndarray, axes: str, *, ome: bool = False, **kwargs) -> None:
    """Write the (t, z, c, y, x) ``coded`` array with its first three axes ordered as ``axes`` says."""
    kept = [a for a in axes if a in "TZC"]
    data = np.transpose(coded, ["TZC".index(a) for a in kept] + [3, 4]) if len(kept) == 3 else coded
    if ome:
        tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={"axes": axes, **kwargs})
    else:
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": axes, **kwargs})


@pytest.mark.parametrize("axes,ome", [("TZCYX", False), ("TCZYX", True), ("TZCYX", True)])
def test_hyperstack_time_and_channel_axes_not_confused(tmp_path, axes, ome):
    coded = _coded((3, 4, 2))
    path = tmp_path / "movie.tif"
    _write_hyperstack(path, coded, axes, ome=ome)
    series = read_series(path, channels=(1,))
    assert [tp.index for tp in series] == [0, 1, 2]
    for t, tp in enumerate(series):
        vol = tp.load()
        assert vol.shape == (4, 6, 7)
        assert [int(vol[z, 0, 0]) for z in range(4)] == [1000 * t + 10 + z for z in range(4)]
    both = TimePoint("x", path, 2, (1, 0)).load()
    assert both.shape == (4, 6, 7, 2)
    assert int(both[3, 0, 0, 0]) == 2013 and int(both[3, 0, 0, 1]) == 2003


def test_zcyx_hyperstack_is_one_volume_with_channels(tmp_path):
    coded = _coded((1, 5, 3))[0]  # (z, c, y, x)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, coded, imagej=True, metadata={"axes": "ZCYX", "Labels": ["DAPI", "GFP", "BF"] * 5})
    series = read_series(path, channels=(0,))
    assert series == [TimePoint("stack", path, None, (0,))]
    np.testing.assert_array_equal(series[0].load(), coded[:, 0])
    np.testing.assert_array_equal(read_stack(path, (2,)), coded[:, 2])
    np.testing.assert_array_equal(read_stack(path, (2, 0)), np.stack([coded[:, 2], coded[:, 0]], axis=-1))
    with pytest.raises(InputError, match=r"stack.tif: has 3 channels \(0: DAPI, 1: GFP, 2: BF\); choose the nuclear "
                                         r"channel with --channel N"):
        read_series(path)
    with pytest.raises(InputError, match=r"stack.tif: has 3 channel\(s\) \(0: DAPI, 1: GFP, 2: BF\); no channel 3"):
        read_series(path, channels=(3,))
    with pytest.raises(InputError, match=r"stack.tif: has 3 channels"):
        read_stack(path)


def test_ome_channel_names_listed(tmp_path):
    coded = _coded((1, 4, 2))[0]
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, np.transpose(coded, (1, 0, 2, 3)), ome=True, photometric="minisblack",
                     metadata={"axes": "CZYX", "Channel": {"Name": ["H2B-mCherry", "membrane"]}})
    with pytest.raises(InputError, match=r"has 2 channels \(0: H2B-mCherry, 1: membrane\)"):
        read_series(path)
    np.testing.assert_array_equal(read_stack(path, (1,)), coded[:, 1])


def test_one_channel_file_has_only_channel_zero(tmp_path):
    data = _volume(np.uint16)
    write_stack(tmp_path / "a.tif", data)
    np.testing.assert_array_equal(read_stack(tmp_path / "a.tif", (0,)), data)
    with pytest.raises(InputError, match=r"a.tif: has 1 channel\(s\) \(0\); no channel 1"):
        read_series(tmp_path / "a.tif", channels=(1,))


@pytest.mark.parametrize("axes,shape", [("TYX", (4, 6, 7)), ("CYX", (3, 6, 7)), ("TCYX", (2, 3, 6, 7))])
def test_axes_without_z_are_refused(tmp_path, axes, shape):
    path = tmp_path / "noz.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8), imagej=True, metadata={"axes": axes})
    with pytest.raises(InputError, match=f"noz.tif: axes {axes} .* have no z axis"):
        read_series(path)
    with pytest.raises(InputError, match=f"noz.tif: axes {axes}"):
        read_stack(path)


def test_plain_tiff_rule(tmp_path):
    """No axis metadata: 3D is (z, y, x), 4D is (t, z, y, x), never channels."""
    data = _coded((2, 3, 1))[:, :, 0]  # (t, z, y, x)
    tifffile.imwrite(tmp_path / "p4.tif", data, photometric="minisblack")
    series = read_series(tmp_path / "p4.tif")
    assert [tp.index for tp in series] == [0, 1]
    np.testing.assert_array_equal(series[1].load(), data[1])
    tifffile.imwrite(tmp_path / "p3.tif", data[0], photometric="minisblack")
    np.testing.assert_array_equal(read_stack(tmp_path / "p3.tif"), data[0])


def test_header_without_pages_is_one_error(tmp_path):
    path = tmp_path / "hollow.tif"
    path.write_bytes(b"II*\x00\x00\x00\x00\x00")
    with pytest.raises(InputError, match="hollow.tif: TIFF file holds no images"):
        read_series(path)
    with pytest.raises(InputError, match="hollow.tif: TIFF file holds no images"):
        read_stack(path)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_time_point_reads_only_its_data(tmp_path, monkeypatch, compression):
    """Contiguous files are memory-mapped, compressed ones read page by page: neither reads the movie."""
    coded = _coded((4, 3, 2))
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, coded, metadata={"axes": "TZCYX"}, photometric="minisblack", compression=compression)
    read_keys = []
    real = tifffile.TiffFile.asarray

    def counting(self, key=None, **kwargs):
        read_keys.append(key)
        return real(self, key=key, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "asarray", counting)
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", lambda *a, **k: pytest.fail("read the whole series"))
    vol = read_series(path, channels=(1,))[2].load()
    assert [int(vol[z, 0, 0]) for z in range(3)] == [2010, 2011, 2012]
    if compression:
        assert read_keys == [[13, 15, 17]]  # pages (t=2, z, c=1) only
    else:
        assert read_keys == []


def test_rgb_samples_are_channels(tmp_path):
    data = np.ascontiguousarray(_coded((1, 4, 3))[0].transpose(0, 2, 3, 1)).astype(np.uint8)  # (z, y, x, 3)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, data, photometric="rgb")
    with pytest.raises(InputError, match=r"rgb.tif: has 3 channels \(0, 1, 2\)"):
        read_series(path)
    np.testing.assert_array_equal(read_stack(path, (2,)), data[..., 2])
