"""Region benchmark of one image: the segmentation at each scale, covering, PRI, VOI.

Follows ``evaluation_reg_image.m``, ``match_segmentations.m`` and
``match_segmentations2.m`` of the official BSDS500 benchmark (see
``shared/notes/bsds-benchmark.md`` section A).  Everything is computed from
contingency tables built with ``np.bincount``; the segmentations of all scales
(:class:`SegmentationStack`) are held in a compact form (a fine base partition plus, per threshold, a label for each base
region), so that the per-threshold work does not touch every pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from skimage.measure import label as sk_label

from ndd.evaluation.scales import level_scales
from ndd.formats import relabel_consecutive

__all__ = [
    "RegionCounts",
    "SegmentationStack",
    "region_counts",
    "segs_hierarchy",
    "ucm2_hierarchy",
]


@dataclass(frozen=True)
class SegmentationStack:
    """The T segmentations of an (h, w) image that the region benchmark scores, in compact form.

    One segmentation per scale: a ucm2 thresholded at each threshold, or the
    maps of a ``segs`` stack.  (Not :class:`ndd.segment.Hierarchy`, which is
    ``ndd segment``'s own nested output; this is the benchmark's view of any
    method's result.)

    ``base``: (h, w) int, the index (0..P-1) of the base region of each pixel;
    every segmentation is a union of base regions.  ``labels``: (T, P) int, the
    segment of each base region in each segmentation, 1..n; 0 marks pixels left
    unlabelled (on a boundary), which the covering ignores as the official code
    does.  ``thresholds``: (T,), the scale of each segmentation.
    """

    base: np.ndarray
    labels: np.ndarray
    thresholds: np.ndarray

    def segmentation(self, i: int) -> np.ndarray:
        """The i-th segmentation as an (h, w) label map."""
        return self.labels[i][self.base]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def ucm2_hierarchy(ucm2: np.ndarray, thresholds: np.ndarray) -> SegmentationStack:
    """Segmentations of a doubleSize ucm2 at each threshold, as the official code.

    At threshold t the official code labels ``ucm2 <= t`` over the whole
    (2h+1, 2w+1) grid with 8-connectivity (MATLAB ``bwlabel``) and keeps the
    pixel positions ``[1::2, 1::2]``.  Here the cells open at the lowest
    threshold are labelled once; every other cell is a graph node that opens at
    its own value, and the partition at t is the connected components of the
    minimum spanning forest restricted to edges of weight <= t (single linkage:
    the same components as the full threshold graph).

    ``ucm2``: (2h+1, 2w+1) float; ``thresholds``: (T,) float.
    """
    u = np.asarray(ucm2, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] % 2 == 0 or u.shape[1] % 2 == 0:
        raise ValueError(f"ucm2 must be (2h+1, 2w+1), got shape {u.shape}")
    H, W = u.shape
    t0 = float(thresholds.min())
    open0 = u <= t0
    lab0 = sk_label(open0, connectivity=2, background=0)  # 8-connectivity, 1..n0
    n0 = int(lab0.max())
    closed = np.flatnonzero(~open0.ravel())
    node = (lab0.ravel() - 1).astype(np.int64)  # open cells: their component
    node[closed] = n0 + np.arange(closed.size)  # closed cells: one node each
    n_nodes = n0 + closed.size
    value = np.full(n_nodes, -np.inf)
    value[n0:] = u.ravel()[closed]
    # 8-neighbour adjacency of the closed cells (pairs of open cells are
    # already merged); an edge opens when both its ends are open.
    cy, cx = np.divmod(closed, W)
    src, dst = [], []
    for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        ny, nx = cy + dy, cx + dx
        ok = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
        src.append(node[closed[ok]])
        dst.append(node[ny[ok] * W + nx[ok]])
    a, b = np.concatenate(src), np.concatenate(dst)
    keep = a < b  # one direction per pair (closed-closed pairs appear twice)
    keep |= (a > b) & (value[b] == -np.inf)  # closed → open: only seen from the closed side
    a, b = a[keep], b[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.sort(lo * n_nodes + hi)  # a closed cell touches an open region many times
    key = key[np.r_[True, key[1:] != key[:-1]]]
    lo, hi = np.divmod(key, n_nodes)
    # weights shifted by -t0 are > 0: scipy would drop explicit zeros
    weight = np.maximum(value[lo], value[hi]) - t0
    mst = minimum_spanning_tree(coo_matrix((weight, (lo, hi)), shape=(n_nodes, n_nodes))).tocoo()
    m_a, m_b, m_w = mst.row, mst.col, mst.data + t0

    pix_node = node.reshape(H, W)[1::2, 1::2]
    used, base = np.unique(pix_node, return_inverse=True)
    base = base.reshape(pix_node.shape)
    labels = np.zeros((thresholds.size, used.size), dtype=np.int64)
    used_value = value[used]
    prev: tuple[np.ndarray, np.ndarray] | None = None
    for i, t in enumerate(thresholds):
        on = m_w <= t
        used_open = used_value <= t
        if prev is not None and np.array_equal(on, prev[0]) and np.array_equal(used_open, prev[1]):
            labels[i] = labels[i - 1]  # nothing opened or closed since the previous threshold
            continue
        prev = (on, used_open)
        graph = coo_matrix((np.ones(int(on.sum())), (m_a[on], m_b[on])), shape=(n_nodes, n_nodes))
        _, comp = connected_components(graph, directed=False)
        _, lab = np.unique(comp[used], return_inverse=True)
        lab = lab + 1
        lab[~used_open] = 0  # a pixel cell above t is boundary: label 0
        labels[i] = lab
    return SegmentationStack(base.astype(np.int64), labels, thresholds)


def segs_hierarchy(segs: Sequence[np.ndarray]) -> SegmentationStack:
    """A stack of label maps as a :class:`SegmentationStack` (scales 1..S, as official).

    Labels are renumbered 1..n per map (the metrics depend on the partition
    only; the official code requires labels >= 1, a label 0 here is just one
    more segment).  ``segs``: S maps of equal shape (h, w).
    """
    if len(segs) == 0:
        raise ValueError("empty stack of segmentations")
    shape = np.shape(segs[0])
    labels = []
    for k, s in enumerate(segs):
        s = np.asarray(s)
        if s.shape != shape or s.ndim != 2:
            raise ValueError(f"segmentation {k} has shape {s.shape}, expected {shape}")
        labels.append(relabel_consecutive(s).ravel() + 1)
    base = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return SegmentationStack(base, np.stack(labels).astype(np.int64), level_scales(len(segs)))


@dataclass(frozen=True)
class RegionCounts:
    """Region scores of one image at each of T scales (the official temporaries).

    ``cnt_r``, ``sum_r``, ``cnt_p``, ``sum_p``: (T,) covering counts
    (``_ev2.txt``); ``cnt_r_best``: scalar (``_ev3.txt``); ``pri``, ``voi``:
    (T,) means over the annotations (``_ev4.txt``); ``cover_k``: (T, K)
    covering of each annotation by the segmentation, Cover(S → G_k), for the
    paper's AVG/MAX protocol; ``cover_k_best``: (K,) per-annotation Best.
    """

    thresholds: np.ndarray
    cnt_r: np.ndarray
    sum_r: np.ndarray
    cnt_p: np.ndarray
    sum_p: np.ndarray
    cnt_r_best: float
    pri: np.ndarray
    voi: np.ndarray
    cover_k: np.ndarray


def _plogp_sum(counts: np.ndarray, n: float) -> float:
    """-Σ (c/n) log2(c/n) over the positive counts (entropy in bits)."""
    p = counts[counts > 0] / n
    return float(-(p * np.log2(p)).sum())


def region_counts(stack: SegmentationStack, gt_segmentations: Sequence[np.ndarray]) -> RegionCounts:
    """Covering, PRI and VOI counts of one image at every scale.

    ``gt_segmentations``: the K human (h, w) label maps, labels >= 1.
    """
    gts = [np.asarray(g) for g in gt_segmentations]
    if not gts:
        raise ValueError("no ground-truth annotation")
    shape = stack.base.shape
    n_pix = int(np.prod(shape))
    base = stack.base.ravel()
    n_base = int(stack.labels.shape[1])
    base_area = np.bincount(base, minlength=n_base).astype(np.float64)

    # Stack the regions of all annotations into one list ("total_gt" regions):
    # joint counts (base region, global GT region) built once.
    t_base, t_gt, t_cnt = [], [], []
    gt_area, gt_ann = [], []
    offset = 0
    h_gt = np.zeros(len(gts))
    sum_b2 = np.zeros(len(gts))
    for k, g in enumerate(gts):
        if g.shape != shape:
            raise ValueError(f"annotation {k} has shape {g.shape}, segmentation {shape}")
        g = g.ravel().astype(np.int64)
        if g.min() < 1:
            raise ValueError(f"annotation {k} has labels < 1")
        m = int(g.max())
        joint = np.bincount(base * m + (g - 1), minlength=n_base * m)
        nz = np.flatnonzero(joint)
        t_base.append(nz // m)
        t_gt.append(offset + nz % m)
        t_cnt.append(joint[nz])
        area = np.bincount(g - 1, minlength=m).astype(np.float64)
        gt_area.append(area)
        gt_ann.append(np.full(m, k))
        h_gt[k] = _plogp_sum(area, n_pix)
        sum_b2[k] = float((area.astype(np.int64) ** 2).sum())
        offset += m
    t_base = np.concatenate(t_base)
    t_gt = np.concatenate(t_gt)
    t_cnt = np.concatenate(t_cnt).astype(np.float64)
    gt_area = np.concatenate(gt_area)
    gt_ann = np.concatenate(gt_ann)
    n_gt = offset
    n_ann = len(gts)

    T = len(stack)
    cnt_r = np.zeros(T)
    cnt_p = np.zeros(T)
    sum_p = np.zeros(T)
    pri = np.zeros(T)
    voi = np.zeros(T)
    cover_k = np.zeros((T, n_ann))
    best_gt = np.zeros(n_gt)  # running max over scales of each GT region's best overlap
    n_pairs = n_pix * (n_pix - 1) / 2.0
    for i in range(T):
        lab = stack.labels[i]
        n_seg = int(lab.max()) + 1  # segment 0 = unlabelled
        seg_area = np.bincount(lab, weights=base_area, minlength=n_seg)
        s = lab[t_base]
        # contingency (segment, global GT region), nonzero entries only
        key = s * n_gt + t_gt
        if n_seg * n_gt <= 4_000_000:
            dense = np.bincount(key, weights=t_cnt, minlength=n_seg * n_gt)
            key = np.flatnonzero(dense)
            n = dense[key]
        else:
            key, inv = np.unique(key, return_inverse=True)
            n = np.bincount(inv, weights=t_cnt)
        js, jg = np.divmod(key, n_gt)
        # --- covering (match_segmentations): IoU, segment 0 excluded
        lab_ok = js > 0
        iou = n[lab_ok] / (seg_area[js[lab_ok]] + gt_area[jg[lab_ok]] - n[lab_ok])
        best_r = np.zeros(n_gt)
        np.maximum.at(best_r, jg[lab_ok], iou)
        best_p = np.zeros(n_seg)
        np.maximum.at(best_p, js[lab_ok], iou)
        cnt_r[i] = float(gt_area @ best_r)
        cnt_p[i] = float(seg_area[1:] @ best_p[1:])
        sum_p[i] = float(seg_area[1:].sum())
        cover_k[i] = np.bincount(gt_ann, weights=gt_area * best_r, minlength=n_ann) / n_pix
        np.maximum(best_gt, best_r, out=best_gt)
        # --- PRI / VOI (match_segmentations2), per annotation, then averaged
        ja = gt_ann[jg]
        sum_n2 = np.bincount(ja, weights=n * n, minlength=n_ann)
        sum_a2 = float((seg_area.astype(np.int64) ** 2).sum())
        ri = 1.0 - (sum_a2 / 2.0 + sum_b2 / 2.0 - sum_n2) / n_pairs
        h_seg = _plogp_sum(seg_area, n_pix)
        mi_terms = (n / n_pix) * np.log2(n * n_pix / (seg_area[js] * gt_area[jg]))
        mi = np.bincount(ja, weights=mi_terms, minlength=n_ann)
        vi = h_seg + h_gt - 2.0 * mi
        pri[i] = ri.mean()
        voi[i] = vi.mean()
    sum_r = np.full(T, float(gt_area.sum()))
    return RegionCounts(
        thresholds=stack.thresholds,
        cnt_r=cnt_r,
        sum_r=sum_r,
        cnt_p=cnt_p,
        sum_p=sum_p,
        cnt_r_best=float(gt_area @ best_gt),
        pri=pri,
        voi=voi,
        cover_k=cover_k,
    )
