"""Speed and accuracy of the diffusion-distance paths on one BSDS-sized grid.

One 321x481 image at stride 8 gives a 41x61 grid (N = 2501); 17x17 window; Ne = 50; t = 10;
hand-crafted Lab + position features (the same graph in every run). For the affinity given
banded (``BandedAffinity``) and as a dense ``(1, N, N)`` tensor, with the spectral part in
float32 and in float64 (``spectral_dtype``; the affinity is float32 in both), it times
side by side, interleaved and repeated (best of ``--repeats``, median in brackets):

* ``diffusion_distance`` with the default solver (block Krylov + Rayleigh-Ritz),
  and the same with every product by ``torch.mm`` instead of ndd's compiled kernel (what an
  install without a C compiler runs; with ``--threads`` above 1 both use ``torch.mm``),
* the paper's accelerated simultaneous iteration (``solver="subspace"``, ``T`` QR steps of
  ``round(2t)`` products) and a cheaper setting of it (``--fast-power`` products),
* the exact path (dense ``eigh`` of the symmetric conjugate, then D),
* SciPy ARPACK ``eigsh`` (top Ne of the sparse ``S``; for the dense input also of the dense
  array, and of ``csr_matrix(S)`` with the conversion timed) + the same Eq. 4 assembly of D;
  with SciPy's default ``tol=0`` (machine precision, the issue's baseline) and, on the sparse
  ``S``, with ``--arpack-tol`` (1e-3: what a user who needs D to 1e-3 would ask for; in float64
  it stops one restart earlier, with the same D to float32 rounding),

and prints the ratios, the relative Frobenius error of every D against the exact spectrum
truncated to Ne (float64), peak memory, and a whole ``SpecDiffNet`` forward. On a GPU
(``--device cuda``) it prints the same timings there (ARPACK stays on the CPU) and peak
CUDA memory.

    python benchmarks/bench_spectral.py [--threads 1] [--repeats 5] [--device cuda] [--image PATH]
    python benchmarks/bench_spectral.py --accuracy-only --model-images 13
    python benchmarks/bench_spectral.py --skip-model --knn-points 20000
    python benchmarks/bench_spectral.py --breakdown --repeats 10

The dense ``W`` is also timed as a torch sparse CSR tensor (taken as it is). Both are
recognised as the band of their 41x61 grid (``spectral.sparsity._as_banded``), so the default solver
starts from the grid's cosines there too; the printed depths show it. ``--knn-points``
adds the eigenpairs of a large k-nearest-neighbour graph given as a torch sparse ``W``
(``diffusion_embedding``, nothing ``N x N``) against ARPACK. The second command checks the shipped default model on real photos (``examples/coffee.jpg`` and the
BSDS mini images): D of the default solver and of the paper's against the exact spectrum.

``--threads`` sets torch's and the BLAS (OpenBLAS, MKL) thread counts, before NumPy or SciPy
load, so ARPACK gets the same number as torch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator


def _threads_from_argv(argv: list[str], default: int = 1) -> int:
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return default


# BLAS libraries read these once, when loaded: set them before NumPy/SciPy/torch import.
_THREADS = _threads_from_argv(sys.argv)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(_THREADS)

import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse  # noqa: E402
import scipy.sparse.linalg  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ndd import spectral  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COFFEE = REPO / "examples/coffee.jpg"
#: The README's figures came from the 28-image BSDS500 subset the tests use ($NDD_BSDS500_MINI, else
#: ../shared/data/bsds500-mini) and its image 100007; a full BSDS500 under data/ has the same image.
MINI_IMAGES = (Path(os.environ["NDD_BSDS500_MINI"]) if os.environ.get("NDD_BSDS500_MINI")
               else REPO.parent / "shared/data/bsds500-mini") / "BSDS500/data/images"
FULL_IMAGES = REPO / "data/BSDS500/data/images"
IMAGE_FOLDERS = [folder for folder in (MINI_IMAGES, FULL_IMAGES) if folder.is_dir()]
DEFAULT_IMAGE = next((f / "test/100007.jpg" for f in IMAGE_FOLDERS if (f / "test/100007.jpg").exists()), None)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def grid_features(path: Path | None, device: torch.device) -> torch.Tensor:
    """Lab colour + position on the 41x61 grid of a 321x481 image (hand-crafted features)."""
    from skimage import color, io

    if path is not None and path.exists():
        rgb = io.imread(path)[:321, :481]
        if rgb.shape[0] > rgb.shape[1]:
            rgb = rgb.transpose(1, 0, 2)
    else:  # synthetic stand-in with a few regions
        rng = np.random.default_rng(0)
        rgb = np.zeros((321, 481, 3), np.uint8)
        for _ in range(12):
            y, x, r = rng.integers(0, 321), rng.integers(0, 481), rng.integers(20, 120)
            yy, xx = np.ogrid[:321, :481]
            rgb[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(0, 255, 3)
    lab = torch.from_numpy(color.rgb2lab(rgb)).permute(2, 0, 1)[None].float()
    lab = F.adaptive_avg_pool2d(lab, (41, 61)) / 10.0
    ys, xs = torch.meshgrid(torch.linspace(0, 4, 41), torch.linspace(0, 6, 61), indexing="ij")
    return torch.cat([lab, ys[None, None], xs[None, None]], 1).to(device)


def literal_eq5_distance(W, t: float, n_eigs: int, n_iter: int) -> torch.Tensor:
    """Eq. 5 read literally: the QR columns as eigenvectors and diag(R) of S^(2t) as lambda^(2t)."""
    d = spectral.degree(W)
    S = spectral.symmetric_normalize(W)
    power = spectral.default_power(t)
    U = spectral.initial_subspace(W.num_nodes, n_eigs, W.grid_shape, d.dtype, d.device).expand(1, -1, -1)
    for _ in range(n_iter):
        Z = U
        for _ in range(power):
            Z = spectral.apply_operator(S, Z)
        U, R = torch.linalg.qr(Z)
    psi = (d.sum(-1, keepdim=True) / d).sqrt().unsqueeze(-1) * U
    M = (psi * R.diagonal(dim1=-2, dim2=-1).abs().unsqueeze(-2)) @ psi.transpose(-1, -2)
    diag = M.diagonal(dim1=-2, dim2=-1)
    return (diag.unsqueeze(-1) + diag.unsqueeze(-2) - 2 * M).clamp_min(0)


class Clock:
    """Times named callables in interleaved rounds (load drifts hit every path alike)."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.outputs = device, {}, {}

    def run(self, name: str, fn) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.setdefault(name, []).append(time.perf_counter() - start)
        self.outputs[name] = out

    def best(self, name: str) -> float:
        return min(self.times[name])

    def show(self, name: str) -> str:
        t = self.times[name]
        return f"{min(t) * 1e3:8.1f} ms [{np.median(t) * 1e3:7.1f}]"


def arpack_then_assembly(S_scipy, scale: torch.Tensor, t: float, n_eigs: int, out_dtype: torch.dtype,
                         tol: float = 0.0) -> torch.Tensor:
    """What a user would do instead: top-Ne eigenpairs by ARPACK (``tol`` 0, SciPy's default: to
    machine precision), then the same Eq. 4 assembly."""
    lam, V = scipy.sparse.linalg.eigsh(S_scipy, k=n_eigs, which="LM", tol=tol)
    lam, V = torch.from_numpy(lam).to(scale.dtype), torch.from_numpy(V).to(scale.dtype)
    G = scale.unsqueeze(-1) * V * lam.square().pow(t / 2)  # sqrt(vol) D^-1/2 v |lambda|^t
    return spectral.distance._assemble_distance(G.unsqueeze(0), out_dtype)


def torch_products(fn):
    """``fn()`` with every product by ``S`` in ``torch.mm`` (MKL's CSR kernel), as an install
    without a C compiler runs it, instead of ndd's compiled kernel (``ndd.spectral.kernels``)."""
    compiled = spectral.kernels.COMPILED
    spectral.kernels.COMPILED = False
    try:
        return fn()
    finally:
        spectral.kernels.COMPILED = compiled


def krylov_eigenpairs(W, t: float, n_eigs: int, dtype: torch.dtype):
    """The default solver up to its eigenpairs (what ARPACK returns): block Krylov + Rayleigh-Ritz,
    made deeper as for D (its error bound depends on ``t``), no D assembled."""
    result = spectral.diffusion(W, t, n_eigs, spectral_dtype=dtype, distance=False)
    return result.eigenvalues, result.eigenvectors


def krylov_depth(W, t: float, n_eigs: int, dtype: torch.dtype) -> int:
    """Krylov blocks (products by ``S``) the default solver used on ``W``: it starts with
    ``KRYLOV_FIRST_DEPTH`` and goes deeper while its error bound exceeds ``KRYLOV_TOLERANCE``."""
    depths = []
    build = spectral.krylov._block_krylov

    def spy(op, U0, n_blocks, state=None):
        depths.append(n_blocks)
        return build(op, U0, n_blocks, state)

    spectral.krylov._block_krylov = spy
    try:
        spectral.diffusion(W, t, n_eigs, spectral_dtype=dtype, distance=False)
    finally:
        spectral.krylov._block_krylov = build
    return depths[-1]


@contextmanager
def _timed(owner, name: str, log: dict[str, float], key: str, sync) -> Iterator[None]:
    """Patches ``owner.name`` with a wrapper that adds its wall time to ``log[key]``."""
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        sync()
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sync()
            log[key] = log.get(key, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapped)
    try:
        yield
    finally:
        setattr(owner, name, original)


def solver_breakdown(graphs: dict[str, object], t: float, n_eigs: int, repeats: int, device: torch.device) -> None:
    """Where the default solver's time goes: ``diffusion_distance`` with timing wrappers around its
    stages (input checks and operator, start block, the Krylov run and inside it the products by
    S and the QRs, ``eigh`` of H, the assembly of D); the run of smallest total is shown, its
    remainder is Rayleigh-Ritz bookkeeping and the Ritz vectors. The wrappers add a few calls per
    stage, so the total is a little above the untimed call's."""
    from ndd.spectral import distance, krylov, operators

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    stages = [(distance, "_prepare", "checks, recognition, S, operator"),
              (distance, "_default_start", "start block"),
              (krylov, "_block_krylov", "Krylov run (all below)"),
              (operators._Operator, "__call__", "  products by S (banded, CSR)"),
              (operators._SparseOperator, "__call__", "  products by S (banded, CSR)"),
              (torch.linalg, "qr", "  QRs (Householder, Cholesky)"),
              (krylov, "_cholesky_qr", "  QRs (Householder, Cholesky)"),
              (krylov, "_ritz_eigh", "eigh of H"),
              (distance, "_assemble_distance", "assembly of D")]
    print(f"\nwhere the default solver's time goes (best of {repeats} runs, stage times of the fastest):")
    for name, dtype in DTYPES.items():
        for form, W in graphs.items():
            runs = []
            for _ in range(repeats + 1):
                log: dict[str, float] = {}
                with contextlib.ExitStack() as stack:
                    for owner, attr, key in stages:
                        stack.enter_context(_timed(owner, attr, log, key, sync))
                    sync()
                    start = time.perf_counter()
                    with torch.no_grad():
                        spectral.diffusion_distance(W, t, n_eigs, spectral_dtype=dtype)
                    sync()
                    log["total"] = time.perf_counter() - start
                runs.append(log)
            log = min(runs[1:], key=lambda r: r["total"])  # the first run warms up
            inner = log.get("  products by S (banded, CSR)", 0.0) + log.get("  QRs (Householder, Cholesky)", 0.0)
            log["  Gram-Schmidt and the rest of the run"] = log["Krylov run (all below)"] - inner
            log["Ritz vectors, bookkeeping"] = log["total"] - sum(
                log.get(key, 0.0) for key in dict.fromkeys(k for _, _, k in stages) if not key.startswith("  "))
            keys = list(dict.fromkeys(k for _, _, k in stages))
            keys[keys.index("  QRs (Householder, Cholesky)") + 1:1 + keys.index("  QRs (Householder, Cholesky)")] = [
                "  Gram-Schmidt and the rest of the run"]
            parts = ", ".join(f"{key.strip()} {log.get(key, 0.0) * 1e3:.1f}" for key in keys + ["Ritz vectors, bookkeeping"])
            print(f"  {name} {form}: total {log['total'] * 1e3:.1f} ms = {parts} ms")


def knn_embedding(n_points: int, n_eigs: int, repeats: int, device: torch.device, arpack_tol: float) -> None:
    """Eigenpairs of a large sparse graph given as a torch sparse W: ``n_points`` points in 3-D
    (20 Gaussian blobs, seed 0), each joined to its 10 nearest (scipy's cKDTree), Gaussian
    weights; ``diffusion_embedding`` (float64, nothing N x N) against ARPACK on the same S, with
    ``tol=0`` and with ``arpack_tol``."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(20, 3))
    points = centres[rng.integers(0, 20, n_points)] + rng.normal(size=(n_points, 3))
    dist, nbr = cKDTree(points).query(points, k=11)
    rows = np.repeat(np.arange(n_points), 11)
    A = scipy.sparse.coo_matrix((np.exp(-dist.ravel() ** 2), (rows, nbr.ravel())), shape=(n_points,) * 2).tocsr()
    A = A.maximum(A.T).tocoo()  # symmetric: i ~ j if either is among the other's 10 nearest
    W = torch.sparse_coo_tensor(np.stack([A.row, A.col]), A.data, A.shape, check_invariants=True).coalesce().to(device)
    d = np.asarray(A.sum(1)).ravel()
    S = scipy.sparse.diags(d ** -0.5) @ A @ scipy.sparse.diags(d ** -0.5)
    clock = Clock(device)
    for _ in range(repeats):
        clock.run("ndd", lambda: spectral.diffusion_embedding(W, n_eigs))
        clock.run("arpack", lambda: scipy.sparse.linalg.eigsh(S.tocsr(), k=n_eigs, which="LM"))
        clock.run("arpack tol", lambda: scipy.sparse.linalg.eigsh(S.tocsr(), k=n_eigs, which="LM", tol=arpack_tol))
    lam = clock.outputs["ndd"][0].cpu().numpy()
    ref = np.sort(np.abs(clock.outputs["arpack"][0]))[::-1]
    print(f"\nk-nearest-neighbour graph, N={n_points}, {A.nnz} stored entries, Ne={n_eigs}, torch sparse COO W: "
          f"diffusion_embedding {clock.show('ndd')}, ARPACK eigsh on S {clock.show('arpack')} "
          f"({clock.best('arpack') / clock.best('ndd'):.1f}x), with tol={arpack_tol:g} {clock.show('arpack tol')} "
          f"({clock.best('arpack tol') / clock.best('ndd'):.1f}x); largest eigenvalue gap to ARPACK (tol=0) "
          f"{np.abs(np.sort(np.abs(lam))[::-1] - ref).max():.1e}")


def model_accuracy(n_images: int, n_eigs: int, n_iter: int, device: torch.device) -> None:
    """The shipped default model's affinity on real photos: D of the default solver and of the
    paper's against the exact spectrum truncated to Ne (all float64 spectral parts)."""
    from ndd import io
    from ndd.inference import working_size
    from ndd.models import load_default_model

    model = load_default_model(device)
    t = float(model.t.detach())
    paths = [COFFEE] + (sorted(IMAGE_FOLDERS[0].glob("*/*.jpg")) if IMAGE_FOLDERS else [])
    if len(paths) < n_images:
        print(f"  only {len(paths)} images found (coffee.jpg and a BSDS500 copy: {MINI_IMAGES} or {FULL_IMAGES})")
    worst = [0.0, 0.0, 0.0]
    print(f"\nshipped model (t={t:.3f}, Ne={n_eigs}): relative Frobenius error of D "
          f"against the exact truncated spectrum")
    print(f"  {'image':<12} {'default solver':>15} {'paper (T=' + str(n_iter) + ')':>15} {'default vs paper':>17}")
    for path in paths[:n_images]:
        image = io.read_image(path)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
        x = F.interpolate(x, size=working_size(image.shape[:2], 481), mode="bilinear", antialias=True).clamp(0, 1)
        with torch.no_grad():
            out = model(x, eigenpairs=False)  # out.distance: the default solver
            W = out.affinity
            paper = spectral.diffusion_distance(W, t, n_eigs, n_iter, solver="subspace")
            exact = spectral.diffusion_distance(W, t, n_eigs, solver="eigh").double()
        pairs = ((out.distance, exact), (paper, exact), (out.distance, paper.double()))
        errors = [float((a.double() - b).norm() / b.norm()) for a, b in pairs]
        worst = [max(w, e) for w, e in zip(worst, errors)]
        print(f"  {path.stem:<12} {errors[0]:15.1e} {errors[1]:15.1e} {errors[2]:17.1e}", flush=True)
    print(f"  {'worst':<12} {worst[0]:15.1e} {worst[1]:15.1e} {worst[2]:17.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE,
                        help="photo whose 41x61 grid is the graph (default: BSDS500 test 100007, from the tests' "
                             "subset or data/BSDS500; a synthetic stand-in when neither is there)")
    parser.add_argument("--n-eigs", type=int, default=50)
    parser.add_argument("--t", type=float, default=10.0)
    parser.add_argument("--n-iter", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=_THREADS, help="torch and BLAS threads (default 1)")
    parser.add_argument("--arpack-tol", type=float, default=1e-3,
                        help="ARPACK is also timed with this tol (relative residual of its Ritz pairs), as a user "
                             "who needs D to 1e-3 would run it; SciPy's default 0 asks for machine precision")
    parser.add_argument("--fast-power", type=int, default=6,
                        help="a cheaper products-per-QR-step setting of the paper's solver")
    parser.add_argument("--skip-model", action="store_true", help="skip the whole-SpecDiffNet forward timings")
    parser.add_argument("--model-images", type=int, default=0,
                        help="also check the shipped model's D on coffee.jpg and this many images in all (BSDS mini)")
    parser.add_argument("--accuracy-only", action="store_true", help="only the shipped-model accuracy check")
    parser.add_argument("--breakdown", action="store_true",
                        help="only where the default solver's time goes, stage by stage (banded and dense W)")
    parser.add_argument("--knn-points", type=int, default=0,
                        help="also time the eigenpairs of a k-nearest-neighbour graph of this many points "
                             "given as a torch sparse W (e.g. 20000)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    load = os.getloadavg()
    if args.accuracy_only:
        model_accuracy(max(1, args.model_images), args.n_eigs, args.n_iter, device)
        return

    if args.image is not None and not args.image.exists():
        parser.error(f"--image: no such file: {args.image}")
    print("graph source: " + (str(args.image) if args.image is not None
                              else "a synthetic stand-in (no BSDS500 image found; pass --image)"))
    feats = grid_features(args.image, device)
    W = spectral.local_affinity(feats, 1.0, window=17)  # float32, banded
    Wd = W.to_dense()  # the same affinity as a dense (1, N, N) tensor
    with warnings.catch_warnings():  # torch's "Sparse CSR tensor support is in beta" is not ours to print
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        Ws = Wd[0].to_sparse_csr()  # and as a torch sparse CSR (N, N) one, built once (as ARPACK's sparse S)
    n, ne, t = W.num_nodes, args.n_eigs, args.t
    if args.breakdown:
        solver_breakdown({"banded": W, "dense": Wd, "sparse CSR": Ws}, t, ne, args.repeats, device)
        return
    block, blocks = spectral.krylov_size(ne, n)
    print(f"graph: 41x61 grid (N={n}), 17x17 window, Ne={ne}, t={t}; device={device}, torch threads="
          f"{torch.get_num_threads()}, BLAS threads={os.environ['OPENBLAS_NUM_THREADS']}; "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    depths = {f"{kind} {name}": krylov_depth(graph, t, ne, dtype) for name, dtype in DTYPES.items()
              for kind, graph in (("banded", W), ("dense", Wd))}
    print(f"default solver: block Krylov on {block} columns, {blocks} products first, deeper while the error bound "
          f"exceeds {spectral.KRYLOV_TOLERANCE:g}; here " + ", ".join(f"{k} {v}" for k, v in depths.items())
          + f" products; then Rayleigh-Ritz. Paper: T={args.n_iter} QR steps x {spectral.default_power(t)} products "
          f"on {ne} columns ({args.n_iter * spectral.default_power(t) * ne} column products)")

    with torch.no_grad():
        D_full64 = spectral.diffusion_distance(Wd.double(), t)
        D_trunc64 = spectral.diffusion_distance(Wd.double(), t, ne, solver="eigh")
        D_literal = literal_eq5_distance(W, t, ne, args.n_iter)
        # ARPACK's inputs, built once (not timed): S in each dtype, sparse and dense, and sqrt(vol) D^-1/2
        arpack_in = {}
        for name, dtype in DTYPES.items():
            W_c = W.weights.to(dtype)
            d = W_c.sum(-1)[0]
            S = spectral.symmetric_normalize(spectral.BandedAffinity(W_c, W.grid_shape, W.window)).to_dense()[0]
            S_np = S.cpu().numpy()
            arpack_in[name] = (scipy.sparse.csr_matrix(S_np), S_np, (d.sum() / d).sqrt().cpu())

    paths = {
        "krylov": lambda W_, dt: spectral.diffusion_distance(W_, t, ne, spectral_dtype=dt),
        "krylov mm": lambda W_, dt: torch_products(lambda: spectral.diffusion_distance(W_, t, ne, spectral_dtype=dt)),
        "paper": lambda W_, dt: spectral.diffusion_distance(W_, t, ne, args.n_iter, solver="subspace",
                                                            spectral_dtype=dt),
        "fast": lambda W_, dt: spectral.diffusion_distance(W_, t, ne, args.n_iter, n_power=args.fast_power,
                                                           spectral_dtype=dt),
        "exact": lambda W_, dt: spectral.diffusion_distance(W_, t, spectral_dtype=dt),
    }
    clock = Clock(device)
    with torch.no_grad():
        for name, dtype in DTYPES.items():  # warm-up (caches, lazy imports)
            paths["krylov"](W, dtype), paths["krylov"](Wd, dtype), krylov_eigenpairs(W, t, ne, dtype)
        for _ in range(args.repeats):
            for name, dtype in DTYPES.items():
                csr, dense_np, scale = arpack_in[name]
                for key, fn in paths.items():
                    if key != "exact":
                        clock.run(f"{key} band {name}", lambda: fn(W, dtype))
                    clock.run(f"{key} dense {name}", lambda: fn(Wd, dtype))
                clock.run(f"krylov sparse {name}", lambda: paths["krylov"](Ws, dtype))
                clock.run(f"krylov eig {name}", lambda: krylov_eigenpairs(W, t, ne, dtype))
                clock.run(f"arpack eig {name}", lambda: scipy.sparse.linalg.eigsh(csr, k=ne, which="LM"))
                clock.run(f"arpack+D sparse {name}", lambda: arpack_then_assembly(csr, scale, t, ne, torch.float32))
                clock.run(f"arpack eig tol {name}",
                          lambda: scipy.sparse.linalg.eigsh(csr, k=ne, which="LM", tol=args.arpack_tol))
                clock.run(f"arpack+D sparse tol {name}",
                          lambda: arpack_then_assembly(csr, scale, t, ne, torch.float32, tol=args.arpack_tol))
                clock.run(f"arpack+D dense {name}", lambda: arpack_then_assembly(dense_np, scale, t, ne, torch.float32))
                clock.run(f"arpack+D csr(S) {name}",
                          lambda: arpack_then_assembly(scipy.sparse.csr_matrix(dense_np), scale, t, ne, torch.float32))
    load_end = os.getloadavg()

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm())

    def err(key: str) -> str:
        return f"{rel(clock.outputs[key], D_trunc64):.1e}"

    print(f"\n{args.repeats} interleaved rounds, best [median]; load average at the end "
          f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}. Errors: relative Frobenius error of D "
          f"against the exact spectrum truncated to Ne (float64).")
    for name in DTYPES:
        print(f"\n--- spectral part in {name} (affinity float32, D returned float32) ---")
        for form in ("band", "dense"):
            label = "BandedAffinity" if form == "band" else "dense (1, N, N) W"
            exact = clock.best(f"exact dense {name}")
            arpack_sparse = clock.best(f"arpack+D sparse {name}")
            print(f"{label}:")
            print(f"  exact path (dense eigh of S, then D)               {clock.show(f'exact dense {name}')}")
            for key, what in (("krylov", "default: block Krylov + Rayleigh-Ritz"),
                              ("krylov mm", "the same, products by torch.mm (no C compiler)"),
                              ("paper", f"paper: T={args.n_iter} x S^{spectral.default_power(t)}, Rayleigh-Ritz"),
                              ("fast", f"paper's solver, n_power={args.fast_power}")):
                k = f"{key} {form} {name}"
                print(f"  {what:<50} {clock.show(k)}  error {err(k)}  {exact / clock.best(k):5.1f}x exact, "
                      f"{arpack_sparse / clock.best(k):5.2f}x ARPACK+D")
            print(f"  ARPACK eigsh on sparse S + same assembly of D     {clock.show(f'arpack+D sparse {name}')}  "
                  f"error {err(f'arpack+D sparse {name}')}")
            a, k = f"arpack+D sparse tol {name}", f"krylov {form} {name}"
            print(f"  {f'the same, eigsh tol={args.arpack_tol:g}':<50} {clock.show(a)}  error {err(a)}  "
                  f"(default solver {clock.best(a) / clock.best(k):5.2f}x faster)")
            if form == "dense":
                ks = f"krylov sparse {name}"
                print(f"  {'default solver on W as a torch sparse CSR (N, N)':<50} {clock.show(ks)}  error {err(ks)}  "
                      f"{exact / clock.best(ks):5.1f}x exact, {arpack_sparse / clock.best(ks):5.2f}x ARPACK+D")
                kd = f"krylov dense {name}"
                for key, what in (("dense", "ARPACK eigsh on the dense array + D"),
                                  ("csr(S)", "ARPACK on csr_matrix(S), conversion timed, + D")):
                    a = f"arpack+D {key} {name}"
                    print(f"  {what:<50} {clock.show(a)}  error {err(a)}  "
                          f"(default solver {clock.best(a) / clock.best(kd):5.2f}x faster)")
        print(f"eigenpairs only: block Krylov + Rayleigh-Ritz {clock.show(f'krylov eig {name}')}, ARPACK eigsh "
              f"{clock.show(f'arpack eig {name}')} "
              f"({clock.best(f'arpack eig {name}') / clock.best(f'krylov eig {name}'):.1f}x); ARPACK eigsh "
              f"tol={args.arpack_tol:g} {clock.show(f'arpack eig tol {name}')} "
              f"({clock.best(f'arpack eig tol {name}') / clock.best(f'krylov eig {name}'):.1f}x)")
    print()
    print(f"D of the default solver vs the paper's (float64, banded): relative difference "
          f"{rel(clock.outputs['krylov band float64'], clock.outputs['paper band float64']):.1e}")
    for what, value in (("truncated-to-Ne vs full spectrum (float64)", rel(D_trunc64, D_full64)),
                        ("literal Eq. 5 reading (QR columns, diag R) vs truncated exact", rel(D_literal, D_trunc64)),
                        ("exact path float32 vs float64", rel(clock.outputs["exact dense float32"], D_full64))):
        print(f"relative Frobenius error of D, {what + ':':<63} {value:.2e}")
    if device.type == "cuda":
        for name, dtype in DTYPES.items():
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                spectral.diffusion_distance(W, t, ne, spectral_dtype=dtype)
            print(f"peak CUDA memory of the default approximate path, spectral part {name}: "
                  f"{torch.cuda.max_memory_allocated() / 2**20:.1f} MiB")
    if not args.skip_model:
        from ndd.models import SpecDiffNet, SpecDiffNetConfig

        image = torch.rand(1, 3, 321, 481, device=device)
        for backbone in ("small_cnn", "efficientnet_lite0"):
            configs = {(s, p): SpecDiffNetConfig(backbone=backbone, spectral_dtype=s, n_power=p)
                       for s in DTYPES for p in (None, spectral.default_power(t))}  # n_power: the paper's solver
            nets = {key: SpecDiffNet(cfg).to(device).eval() for key, cfg in configs.items()}
            model_clock = Clock(device)
            with torch.no_grad():
                for net in nets.values():
                    net(image, eigenpairs=False)
                for _ in range(args.repeats):
                    for key, net in nets.items():
                        model_clock.run(str(key), lambda: net(image, eigenpairs=False))
            row = " | ".join(f"{s} {model_clock.show(str((s, None))).strip()} (paper's solver "
                             f"{model_clock.show(str((s, spectral.default_power(t)))).strip()})" for s in DTYPES)
            print(f"whole SpecDiffNet forward, {backbone}, one 321x481 image, default solver: {row}")
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.model_images:
        model_accuracy(args.model_images, args.n_eigs, args.n_iter, device)
    if args.knn_points:
        knn_embedding(args.knn_points, args.n_eigs, args.repeats, device, args.arpack_tol)


if __name__ == "__main__":
    main()
