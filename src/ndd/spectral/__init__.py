"""Diffusion distance on graphs and image grids (paper §3, §4.1, §4.2).

Pure, batched, differentiable tensor functions (CPU and CUDA, float32 and float64).

Notation (paper Eqs. 1-4): ``W`` is a symmetric non-negative affinity with
positive degrees ``d = W 1``; ``P = D^-1 W`` the transition matrix;
``pi = d / sum(d)`` its stationary distribution; the diffusion distance is

    D_t(i, j) = sum_k ((P^t)_ik - (P^t)_jk)^2 / pi_k .                    (Eq. 3)

Everything here works on the symmetric conjugate ``S = D^-1/2 W D^-1/2``
(same spectrum as ``P``, orthonormal eigenvectors ``v_m``). With
``psi_m = sqrt(vol) D^-1/2 v_m`` (right eigenvectors of ``P``, ``vol = sum(d)``),
Eq. 3 becomes Eq. 4:

    D_t(i, j) = sum_m lambda_m^(2t) (psi_m(i) - psi_m(j))^2 .

For non-integer ``t`` (``t`` is learnable) ``lambda^(2t)`` means ``(lambda^2)^t``,
which equals Eq. 3 for every integer ``t``.

The distance is assembled from the matrix function ``f(S) = (S^2)^t`` restricted
to a subspace, ``M = vol D^-1/2 U f(U^T S U) U^T D^-1/2`` and
``D_ij = M_ii + M_jj - 2 M_ij``. Differentiating ``f`` with the Daleckii-Krein
divided differences (instead of through individual eigenvectors) keeps gradients
finite when eigenvalues cluster, which is the normal case near ``lambda = 1`` for
images with several nearly disconnected regions.

Solvers. The subspace ``U`` comes by default from block Lanczos (:func:`block_krylov`:
for ``Ne = 50``, 16 start columns, 12 smooth and 4 one-hot at the most isolated nodes; 8
products by ``S`` first, more while the Ritz pairs are not accurate enough; Rayleigh-Ritz
on the Krylov space, the ``Ne`` Ritz pairs of largest modulus kept); the paper's
accelerated simultaneous iteration (``T`` QR steps after ``round(2t)`` products each, on
``Ne`` columns, :func:`subspace_iteration`) stays available (``solver="subspace"``, or
``n_power`` given). A Krylov space of degree ``q`` contains every polynomial filter of
that degree applied to its start, ``S^(q-1) U0`` and the Chebyshev filters included, so
per product it converges much faster: on the benchmark graph and on the shipped model's
affinities it is as accurate or more at a tenth of the column products. The residuals of
its Ritz pairs come free from the last block; while they are large the space is made
deeper, going on from the last one (on a large graph without gradients: restarted from its
best Ritz vectors, so memory stays bounded). A dense or torch sparse ``W`` whose non-zeros lie
in the windows of an image grid is recognised as that band (checked on every entry); another
dense ``W`` that is mostly zeros is multiplied through its non-zeros (CSR), with the full
dense gradient; a torch sparse ``W`` is used as it is.

Precision. :func:`diffusion` (and :func:`diffusion_distance`,
:func:`diffusion_embedding`, :func:`legacy_diffusion_distance`) take a
``spectral_dtype``: the affinity values stay in the caller's dtype (float32 for a
network), while the degrees, the normalisation, the banded operator products, the
subspace iteration and its QRs, Rayleigh-Ritz, ``f(H)`` and the assembly of ``D``
run in ``spectral_dtype``; the results are cast back to the affinity's dtype and
gradients flow back to the affinity values and ``t``. The default for the distance
is float64 because float32 is not enough on near-piecewise-constant features (what
training drives the embedding towards): on nearly disconnected regions the top
eigenvalues cluster at 1 within float32 rounding and ``D_ij = M_ii + M_jj - 2 M_ij``
cancels heavily. On a 41x41 grid of 20 constant regions (64-d unit features, 17x17
window, ``mu = 10``, ``t = 10``, ``Ne = 50``) a float32 spectral part still gives
``D`` to ~5e-6 but its gradient is wrong (relative error 1.3-2, cosine 0.45-0.6),
while the float32 affinity with a float64 spectral part gives 1e-7 and 2e-5 against
an all-float64 pipeline. The float64 part costs ~1.8x the float32 one on a CPU
(still small next to the backbone). ``spectral_dtype=None`` computes in the
affinity's own dtype.

Modules (one job each; the names below are re-exported here): :mod:`.affinity` (grid
affinities, checks, degrees, ``S``), :mod:`.operators` (products by ``S``), :mod:`.sparsity`
(the structure of a given ``W``: non-zeros, sparse input, band recognition),
:mod:`.matrix_function` (``(S^2)^t`` and its gradient), :mod:`.krylov` (the default solver),
:mod:`.subspace` (the paper's), :mod:`.distance` (``D``, ``K_D``, the eigenpairs),
:mod:`.legacy` (the authors' released procedure). The constants are re-exported to be read; to
change one, set it on the module that owns it (``ndd.spectral.krylov.KRYLOV_TOLERANCE``).
"""

from __future__ import annotations

from .affinity import (
    BandedAffinity, band_inner, contour_affinity, degree, feature_kernel, intervening_contour, local_affinity,
    symmetric_normalize, window_offsets,
)
from .distance import (
    SOLVERS, DiffusionResult, default_power, diffusion, diffusion_distance, diffusion_embedding, diffusion_similarity,
    distance_from_embedding,
)
from .krylov import (
    EXACT_MAX_NODES, KRYLOV_FIRST_DEPTH, KRYLOV_MAX_BASIS, KRYLOV_MAX_RESTARTS, KRYLOV_ORTHOGONALITY,
    KRYLOV_RESTART_BLOCKS, KRYLOV_TOLERANCE, block_krylov, krylov_size, krylov_start,
)
from .legacy import legacy_diffusion_distance
from .matrix_function import spectral_power
from .operators import apply_operator
from .sparsity import BAND_SLOTS_PER_ENTRY, SPARSE_DENSITY
from .subspace import initial_subspace, subspace_iteration

__all__ = [
    "BandedAffinity",
    "local_affinity",
    "degree",
    "symmetric_normalize",
    "apply_operator",
    "band_inner",
    "feature_kernel",
    "intervening_contour",
    "contour_affinity",
    "window_offsets",
    "initial_subspace",
    "subspace_iteration",
    "krylov_start",
    "krylov_size",
    "block_krylov",
    "spectral_power",
    "DiffusionResult",
    "diffusion",
    "diffusion_distance",
    "diffusion_embedding",
    "distance_from_embedding",
    "diffusion_similarity",
    "legacy_diffusion_distance",
]
