"""Post-processing (DESIGN section 1, step 4): NDN markers + marker-controlled watershed.

All arrays are 3D (z, y, x). Masks are boolean (anything > 0 counts as foreground);
label images are int32 with 0 = background and instances 1..N.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.segmentation import relabel_sequential, watershed

from .config import PostprocessConfig
from .errors import InputError
from .labels import as_label_image  # noqa: F401  (re-exported: the one label check)

logger = logging.getLogger(__name__)


def _check_3d(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"{name}: expected a 3D (z, y, x) array, got shape {array.shape}")
    return array


def _check_spacing(spacing_zyx: Sequence[float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"spacing_zyx: {tuple(spacing_zyx)!r} is not three positive numbers (z, y, x)")
    return spacing  # type: ignore[return-value]


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Relabel ``labels`` (any shape, integers >= 0) to 0 (background) and 1..N, keeping
    the order of the original ids; one O(voxels) pass. Returns int32."""
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise InputError("labels: negative label ids are not allowed")
    relabelled, _, _ = relabel_sequential(labels.astype(np.int64, copy=False))
    return relabelled.astype(np.int32, copy=False)


def markers_from_ndn(ndn_mask: np.ndarray, min_size: int = 0, gap_um: float = 0.0,
                     spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0), within: np.ndarray | None = None) -> np.ndarray:
    """Markers from the NDN centre mask (z, y, x): 6-connected components, joined when at
    most ``gap_um`` of background (physical units, ``spacing_zyx``) separates them (the
    fragments a threshold cuts from one centre; with ``within``, the NSN mask, only
    through its foreground, so one marker never spans two NSN components), those with
    fewer than ``min_size`` voxels dropped, relabelled 1..M. Returns int32 (z, y, x)."""
    mask = _check_3d("ndn_mask", ndn_mask) > 0
    if min_size < 0:
        raise InputError(f"min_size: {min_size!r} must be >= 0")
    if not (np.isfinite(gap_um) and gap_um >= 0):
        raise InputError(f"gap_um: {gap_um!r} must be a number >= 0")
    spacing = _check_spacing(spacing_zyx)
    components, n = ndimage.label(mask)  # default structure: 6-connectivity in 3D
    if gap_um > 0 and n > 1:
        allowed = None if within is None else (_check_3d("within", within) > 0) | mask
        components, n = _join_across_gaps(components, n, gap_um, spacing, allowed)
    if n and min_size > 0:
        sizes = np.bincount(components.ravel())
        small = sizes < min_size
        small[0] = True  # background stays background
        components[small[components]] = 0
        logger.debug("markers: dropped %d of %d components smaller than %d voxels",
                     int(small[1:].sum()), n, min_size)
    return relabel_consecutive(components)


def _join_across_gaps(components: np.ndarray, n: int, gap_um: float, spacing: tuple[float, float, float],
                      allowed: np.ndarray | None) -> tuple[np.ndarray, int]:
    """``components`` (labels 1..n) with every two joined when a run of at most ``gap_um``
    of background separates them: two 6-adjacent voxels, one nearest to A and one to B
    (voxel centres, physical units), whose distances to them add up to at most ``gap_um``
    (along an axis: the background voxels between A and B times the spacing, odd counts
    as well as even). With ``allowed`` (the NSN mask or the markers) both voxels and both
    components must lie in one 6-connected part of it. Returns (labels 1..m, m)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pad = [int(np.floor(gap_um / s + 1e-9)) + 1 for s in spacing]  # beyond it every distance exceeds the gap
    bbox = ndimage.find_objects((components > 0).astype(np.int8))[0]
    box = tuple(slice(max(0, b.start - p), min(size, b.stop + p)) for b, p, size in zip(bbox, pad, components.shape))
    sub = components[box]
    dist, idx = ndimage.distance_transform_edt(sub == 0, sampling=spacing, return_indices=True)
    nearest = sub[tuple(idx)]  # the component nearest to each voxel (a marker voxel's own)
    ok = None
    if allowed is not None:
        parts, _ = ndimage.label(allowed[box])
        ok = (parts > 0) & (parts[tuple(idx)] == parts)  # allowed, in the part that holds its nearest marker
    del idx
    limit = gap_um + 1e-6 * min(spacing)
    found = []
    for axis in range(3):
        a = tuple(slice(None, -1) if k == axis else slice(None) for k in range(3))
        b = tuple(slice(1, None) if k == axis else slice(None) for k in range(3))
        hit = (nearest[a] != nearest[b]) & (dist[a] + dist[b] <= limit)
        if ok is not None:
            hit &= ok[a] & ok[b]
        found.append(np.stack([nearest[a][hit], nearest[b][hit]], axis=1))
    pairs = np.concatenate(found)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n + 1, n + 1))
    m, group = connected_components(graph, directed=False)
    lut = np.zeros(n + 1, np.int32)
    lut[1:] = group[1:] + 1  # background (0) is in no pair: its group is its own, and stays unused
    return lut[components], m - 1


def watershed_instances(nsn_mask: np.ndarray, markers: np.ndarray,
                        spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Instance labels (z, y, x, int32, 1..N) from the NSN mask and marker labels.

    Marker-controlled watershed (6-connectivity) on the negated Euclidean distance
    transform of the mask, computed in physical units (``spacing_zyx``), restricted to
    the mask. Marker voxels outside the mask are ignored; mask regions reached by no
    marker vanish (polar bodies); with no marker at all, the 6-connected components of
    the mask are returned instead.
    """
    mask = _check_3d("nsn_mask", nsn_mask) > 0
    markers = _check_3d("markers", markers)
    if markers.shape != mask.shape:
        raise InputError(f"markers: shape {markers.shape} differs from the NSN mask shape {mask.shape}")
    spacing = _check_spacing(spacing_zyx)
    markers = np.where(mask, markers, 0).astype(np.int32, copy=False)
    if not markers.any():
        logger.debug("watershed: no marker inside the NSN mask; using its connected components")
        components, _ = ndimage.label(mask)
        return relabel_consecutive(components)
    distance = ndimage.distance_transform_edt(mask, sampling=spacing)
    labels = watershed(-distance, markers=markers, mask=mask, connectivity=1)
    return relabel_consecutive(labels)


def drop_small_instances(labels: np.ndarray, min_volume_um3: float,
                         spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """``labels`` (z, y, x, integers >= 0) without the instances smaller than
    ``min_volume_um3`` (voxel count * voxel volume from ``spacing_zyx``), relabelled
    1..N in the order of the original ids. One bincount pass. Returns int32."""
    labels = as_label_image("labels", labels)
    spacing = _check_spacing(spacing_zyx)
    if min_volume_um3 < 0:
        raise InputError(f"min_volume_um3: {min_volume_um3!r} must be >= 0")
    if min_volume_um3 > 0 and labels.size:
        volumes = np.bincount(labels.ravel()) * float(np.prod(spacing))
        small = volumes < min_volume_um3
        small[0] = False
        if small.any():
            n = int(np.count_nonzero(volumes[1:]))
            logger.debug("dropped %d of %d instances under %g um^3", int(small.sum()), n, min_volume_um3)
            labels = np.where(small[labels], 0, labels)
    return relabel_consecutive(labels)


def _warn_on_markers(mask: np.ndarray, markers: np.ndarray, min_volume_um3: float,
                     spacing: tuple[float, float, float], name: str) -> None:
    """WARNING when NDN gave no marker inside the NSN ``mask``, or far fewer markers
    than the mask has 6-connected components of at least ``min_volume_um3``: fewer
    than half of them, with at least 3 left without a marker (up to 2 unmarked
    components are polar bodies, which the watershed is meant to drop)."""
    inside = np.unique(markers[mask])
    n_markers = int(np.count_nonzero(inside))
    components, n = ndimage.label(mask)
    if n:
        volumes = np.bincount(components.ravel())[1:] * float(np.prod(spacing))
        n = int(np.count_nonzero(volumes >= max(min_volume_um3, 0.0)))
    where = f"{name}: " if name else ""
    if n_markers == 0 and n > 0:
        logger.warning("%sNDN found no nuclear centre inside the NSN mask: falling back to the %d connected "
                       "components of the NSN mask (touching nuclei stay merged, polar bodies are kept); check "
                       "the NDN model or lower --ndn-threshold", where, n)
    elif n_markers < n / 2 and n - n_markers >= 3:
        logger.warning("%sNDN found only %d nuclear centres for %d NSN components of at least %g um^3: the "
                       "components without a centre are dropped; check the NDN model or lower --ndn-threshold",
                       where, n_markers, n, min_volume_um3)


def to_annotation_frame(prob: np.ndarray, offset_um: Sequence[float],
                        spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """``prob`` (z, y, x, grid spacing ``spacing_zyx`` um) moved by ``offset_um`` (z, y, x
    um; :attr:`PostprocessConfig.annotation_offset_um`): linear interpolation, borders
    repeated. The array itself when the offset is zero."""
    prob = _check_3d("prob", prob)
    spacing = _check_spacing(spacing_zyx)
    if not any(offset_um):
        return prob
    return ndimage.shift(prob.astype(np.float32, copy=False), [o / s for o, s in zip(offset_um, spacing)],
                         order=1, mode="nearest")


def instances_from_probabilities(nsn_prob: np.ndarray, ndn_prob: np.ndarray | None, cfg: PostprocessConfig,
                                 spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0), name: str = "") -> np.ndarray:
    """Instance labels (z, y, x, int32, 1..N) from NSN and NDN foreground probabilities
    (z, y, x, same shape, grid spacing ``spacing_zyx`` in um): both moved by
    ``cfg.annotation_offset_um`` (:func:`to_annotation_frame`), ``prob > threshold``
    masks, then :func:`markers_from_ndn` (``cfg.marker_gap_um``, ``cfg.min_marker_size``),
    :func:`watershed_instances` and :func:`drop_small_instances` (``cfg.min_volume_um3``).

    Without NDN (``ndn_prob`` None) the connected components of the NSN mask. A WARNING
    (prefixed with ``name``) says when NDN gave no marker (connected-components fallback)
    or far fewer markers than NSN components (see :func:`_warn_on_markers`).
    """
    nsn_prob = to_annotation_frame(_check_3d("nsn_prob", nsn_prob), cfg.annotation_offset_um, spacing_zyx)
    spacing = _check_spacing(spacing_zyx)
    nsn_mask = nsn_prob > cfg.nsn_threshold
    if ndn_prob is None:
        markers = np.zeros(nsn_mask.shape, np.int32)
    else:
        ndn_prob = _check_3d("ndn_prob", ndn_prob)
        if nsn_prob.shape != ndn_prob.shape:
            raise InputError(f"ndn_prob: shape {ndn_prob.shape} differs from the NSN probability shape "
                             f"{nsn_prob.shape}")
        ndn_prob = to_annotation_frame(ndn_prob, cfg.annotation_offset_um, spacing)
        markers = markers_from_ndn(ndn_prob > cfg.ndn_threshold, cfg.min_marker_size, cfg.marker_gap_um, spacing,
                                   within=nsn_mask)
        _warn_on_markers(nsn_mask, markers, cfg.min_volume_um3, spacing, name)
    labels = watershed_instances(nsn_mask, markers, spacing)
    return drop_small_instances(labels, cfg.min_volume_um3, spacing)
