"""``Hierarchy``: a value type for a hierarchy of nested segmentations.

Finest labels plus a sequence of pair merges and their values; from these, every level
(:meth:`Hierarchy.levels`), the ultrametric and the BSDS ``ucm2``
(:meth:`Hierarchy.to_ucm2`), and the same hierarchy on other finest labels
(:meth:`Hierarchy.resized`, :meth:`Hierarchy.with_finest`). How a hierarchy is built lives in
``pipeline.py``; how a grid hierarchy is brought to full resolution in ``upsample.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ndd.formats.labels import resize_labels

from .ucm import ucm2_from_labels

__all__ = ["Hierarchy", "UcmValues"]

UcmValues = Literal["height", "rank", "spread"]


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """A hierarchy of nested segmentations: the finest labels plus a sequence of pair merges.

    Merges use the scipy linkage convention: leaves are the finest segments ``0 .. n-1`` and
    merge ``m`` creates cluster ``n + m``. After ``k`` merges there are ``n - k`` segments.

    Attributes:
        finest: (H, W) int64 finest labels ``0 .. n-1``.
        merges: (n-1, 2) int64 merged cluster ids, in merge order.
        similarities: (n-1,) average similarity of each merged pair.
        heights: (n-1,) merge heights ``1 - similarity`` clipped to [0, 1] and made
            non-decreasing (running max), so that they define an ultrametric and a ``ucm2``.
        segment_similarity: optional (n, n) mean similarity between finest segments (what the
            merging used); needed to re-run the merging at another resolution.
        segment_sizes: optional (n,) sizes of the finest segments on the grid where
            ``segment_similarity`` was measured.

    Example:
        >>> hier = Hierarchy.from_merges(np.array([[0, 1, 2]]), [(0, 1, 0.75), (2, 3, 0.25)])
        >>> hier.labels_at(2).tolist(), hier.heights.tolist()
        ([[0, 0, 1]], [0.25, 0.75])
        >>> hier.to_ucm2().shape
        (3, 7)
    """

    finest: np.ndarray
    merges: np.ndarray
    similarities: np.ndarray
    heights: np.ndarray
    segment_similarity: np.ndarray | None = None
    segment_sizes: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.n_segments
        # bincount, not np.unique: no sort of a 24-megapixel map
        if self.finest.ndim != 2 or self.finest.min() < 0 or np.count_nonzero(np.bincount(self.finest.ravel())) != n:
            raise ValueError("finest must be (H, W) labels using every id 0 .. n-1")
        if self.merges.shape != (n - 1, 2) or self.heights.shape != (n - 1,):
            raise ValueError(f"a hierarchy over {n} segments needs {n - 1} merges and heights")
        if np.any(np.diff(self.heights) < 0):
            raise ValueError("merge heights must be non-decreasing")

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_merges(
        cls,
        finest: np.ndarray,
        merges: Sequence[tuple[int, int, float]] | np.ndarray,
        similarities: Sequence[float] | np.ndarray | None = None,
        segment_similarity: np.ndarray | None = None,
        segment_sizes: np.ndarray | None = None,
    ) -> Hierarchy:
        """Build from finest labels and merges ``(a, b, similarity)`` (or (n-1, 2) ids plus
        ``similarities``); heights are ``running_max(clip(1 - similarity, 0, 1))``."""
        if similarities is None:
            arr = np.asarray(merges, dtype=np.float64).reshape(-1, 3)
            pairs, sims = arr[:, :2].astype(np.int64), arr[:, 2]
        else:
            pairs = np.asarray(merges, dtype=np.int64).reshape(-1, 2)
            sims = np.asarray(similarities, dtype=np.float64)
        heights = np.maximum.accumulate(np.clip(1.0 - sims, 0.0, 1.0)) if len(sims) else sims.copy()
        return cls(np.asarray(finest, dtype=np.int64), pairs, sims, heights, segment_similarity, segment_sizes)

    # ----------------------------------------------------------------- basic facts
    @property
    def n_segments(self) -> int:
        """Number of finest segments ``n``."""
        return int(self.finest.max()) + 1

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the label maps."""
        return (int(self.finest.shape[0]), int(self.finest.shape[1]))

    def merge_values(self, values: UcmValues = "height") -> np.ndarray:
        """(n-1,) non-decreasing value of each merge in the ``ucm2``.

        ``"height"``: the merge heights. ``"rank"``: evenly spaced by merge order, about
        ``(m + 1) / n`` for merge ``m``. ``"spread"``: the heights, moved by as few BSDS
        threshold steps as needed so that each of the last ``min(n - 1, 98)`` merges has a
        threshold step of its own: every level with at most 99 segments (all that 99
        thresholds can show) is reachable by the benchmark, and values stay comparable across
        images (finer levels share the steps below).
        For ``"rank"`` with ``n <= 100`` and for the ``"spread"`` levels the values sit half-way
        between the BSDS thresholds ``k / 100``, so no value equals a threshold (where the
        region benchmark's ``ucm2 <= t`` and the boundary benchmark's ``ucm2 >= t`` would
        disagree).
        """
        if values == "height":
            return self.heights
        if values == "rank":
            n = self.n_segments
            m = np.arange(1, n, dtype=np.float64)
            if n <= 100:  # step 100/n >= 1 keeps the rounded grid positions distinct
                return (np.round(100.0 * m / n) - 0.5) / 100.0
            return (m - 0.5) / (n - 1)
        if values == "spread":
            return _spread_heights(self.heights)
        raise ValueError(f"values must be 'height', 'rank' or 'spread', got {values!r}")

    def n_segments_at(self, threshold: float, values: UcmValues = "height") -> int:
        """Number of segments of the level that ``ucm2 > threshold`` gives (merges ``<= t`` done)."""
        return self.n_segments - int(np.count_nonzero(self.merge_values(values) <= threshold))

    # ----------------------------------------------------------------- levels
    def labels_at(self, n_segments: int) -> np.ndarray:
        """(H, W) int64 labels ``0 .. n_segments-1`` of the level with that many segments."""
        return self.levels([n_segments])[0]

    def levels(self, n_segments: Sequence[int] | None = None) -> list[np.ndarray]:
        """Label maps of several levels (default: all, finest first).

        Each level is numbered ``0 .. k-1`` in the order of the smallest finest id it contains,
        so a coarse level's labels are stable under further refinement of unrelated parts.
        """
        n = self.n_segments
        wanted = list(range(n, 0, -1)) if n_segments is None else [int(k) for k in n_segments]
        for k in wanted:
            if not 1 <= k <= n:
                raise ValueError(f"n_segments must be in 1 .. {n}, got {k}")
        maps = {k: self.finest_to_level(k)[self.finest] for k in set(wanted)}
        return [maps[k] for k in wanted]

    def finest_to_level(self, n_segments: int) -> np.ndarray:
        """(n,) label, in the level with ``n_segments`` segments, of every finest segment."""
        n = self.n_segments
        cluster = np.arange(n)
        for m, (a, b) in enumerate(self.merges[: n - n_segments]):
            cluster[(cluster == a) | (cluster == b)] = n + m
        # number clusters by their smallest leaf id: np.unique's first index is that leaf
        _, first, inv = np.unique(cluster, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(first))
        return rank[inv]

    # ----------------------------------------------------------------- ultrametric / ucm2
    def ultrametric(self, values: UcmValues = "height") -> np.ndarray:
        """(n, n) value of the merge that first joins each pair of finest segments (0 diagonal)."""
        n = self.n_segments
        v = self.merge_values(values)
        D = np.zeros((n, n), dtype=np.float64)
        members: dict[int, np.ndarray] = {i: np.array([i]) for i in range(n)}
        for m, (a, b) in enumerate(self.merges):
            ma, mb = members.pop(int(a)), members.pop(int(b))
            D[np.ix_(ma, mb)] = v[m]
            D[np.ix_(mb, ma)] = v[m]
            members[n + m] = np.concatenate([ma, mb])
        return D

    def to_ucm2(self, size: tuple[int, int] | None = None, values: UcmValues = "height") -> np.ndarray:
        """BSDS doubleSize ultrametric contour map of the hierarchy.

        Edge elements between 4-neighbours hold the merge value at which their finest segments
        join, junctions the max of their incident edges, pixel positions 0 (see ``ucm.py``).
        ``labels_from_ucm2(ucm2, t)`` then gives the level with ``n_segments_at(t)`` segments
        whenever the levels are 4-connected (always for the default adjacent merging).

        Args:
            size: optional (H, W); the finest labels are resized by nearest neighbour first
                (see :meth:`resized`).
            values: ``"height"`` (merge heights) or ``"rank"`` (evenly spaced), see
                :meth:`merge_values`.

        Returns:
            (2H+1, 2W+1) float64 in [0, 1].
        """
        h = self if size is None or tuple(size) == self.shape else self.resized(size)
        return ucm2_from_labels(h.finest, h.ultrametric(values))

    # ----------------------------------------------------------------- resolution
    def resized(self, size: tuple[int, int]) -> Hierarchy:
        """The same hierarchy with the finest labels resized by nearest neighbour to ``size``.

        Enlarging keeps every segment and its 4-connectivity (each grid cell becomes a block).
        When shrinking, segments that lose all pixels are dropped from the hierarchy.
        """
        return self.with_finest(resize_labels(self.finest, (int(size[0]), int(size[1]))))

    def with_finest(self, finest: np.ndarray) -> Hierarchy:
        """Replay the merges on new finest labels that use a subset of the same ids.

        Ids absent from ``finest`` are pruned: a merge with one absent side is dropped (the
        other side carries on), and the remaining leaves are renumbered in order.
        """
        finest = np.asarray(finest, dtype=np.int64)
        n = self.n_segments
        present = np.zeros(n, dtype=bool)
        present[: finest.max() + 1] = np.bincount(finest.ravel()) > 0
        if present.all():
            return Hierarchy(finest, self.merges, self.similarities, self.heights,
                             self.segment_similarity, self.segment_sizes)
        new_id = np.full(2 * n - 1, -1, dtype=np.int64)
        new_id[np.flatnonzero(present)] = np.arange(int(present.sum()))
        k = int(present.sum())
        pairs, sims = [], []
        for m, (a, b) in enumerate(self.merges):
            ia, ib = new_id[a], new_id[b]
            if ia >= 0 and ib >= 0:
                pairs.append(sorted((ia, ib)))
                sims.append(self.similarities[m])
                new_id[n + m] = k + len(pairs) - 1
            else:
                new_id[n + m] = max(ia, ib)
        keep = np.flatnonzero(present)
        seg_sim = None if self.segment_similarity is None else self.segment_similarity[np.ix_(keep, keep)]
        seg_size = None if self.segment_sizes is None else self.segment_sizes[keep]
        return Hierarchy.from_merges(new_id[finest], np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
                                     np.asarray(sims, dtype=np.float64), seg_sim, seg_size)


def _spread_heights(heights: np.ndarray, steps: int = 100) -> np.ndarray:
    """See :meth:`Hierarchy.merge_values` ``"spread"``.

    Step ``b`` is the open interval ``(b / steps, (b + 1) / steps)`` between two BSDS
    thresholds and holds the value ``(b + 0.5) / steps``. The ``steps - 1`` thresholds can show
    at most ``steps - 1`` levels: the last ``k = min(n - 1, steps - 2)`` merges get distinct steps
    in ``1 .. steps - 2`` (step 0 would merge below every threshold, step ``steps - 1`` above
    every one), each as close to its own height's step as the order allows.
    """
    v = np.asarray(heights, dtype=np.float64)
    k = min(len(v), steps - 2)
    if k == 0:
        return v.copy()
    b = np.clip(np.floor(v[-k:] * steps), 1, steps - 2).astype(np.int64)
    for i in range(1, k):  # strictly increasing, as close to the natural steps as possible
        b[i] = max(b[i], b[i - 1] + 1)
    b[-1] = min(b[-1], steps - 2)
    for i in range(k - 2, -1, -1):
        b[i] = min(b[i], b[i + 1] - 1)
    out = v.copy()
    out[-k:] = (b + 0.5) / steps
    # finer merges (more than steps - 1 segments) stay below the first separated step, in order
    out[: len(v) - k] = np.minimum(v[: len(v) - k], b[0] / steps)
    return np.maximum.accumulate(out)
