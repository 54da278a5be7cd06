"""Hessian spectra of a model's loss: top eigenvalues, trace, spectral density — all from one
Hessian-vector product.

The loss is L(θ) = Σ_b n_b L_b(θ) / Σ_b n_b over the batches b = (x_b, y_b) of `data` (L_b the mean
`loss_fn(model(x_b), y_b)`), i.e. the loss of their union, with the model in eval mode so BatchNorm uses
its running statistics and H = ∇²L(θ) is one fixed symmetric matrix over the trainable parameters.

- `hessian_eigenvalues`: the largest or smallest eigenvalues by Lanczos with full reorthogonalization
  (Ritz values of the tridiagonal T from scipy's eigh_tridiagonal), or power iteration with deflation as
  PyHessian does; each value with its health (error bound, converged, products).
- `hessian_trace`: Hutchinson (default) or Hutch++, tr H ≈ mean of vᵀHv over Rademacher v, with its
  standard error.
- `block_sharpness`: λ_max and trace of each diagonal block H_BB (a block = one top-level submodule).
- `sampling_uncertainty`: λ's and the trace on disjoint subsets of the samples, and at growing sample counts.
- `curvature`, `hessian_directions`: λ_max/λ_min at a surface point, and surface directions along the
  top eigenvectors.
- `hessian_density`: stochastic Lanczos quadrature as PyHessian's `density`: per run the eigenvalues θ_j
  of T and weights τ_j = (first component of T's j-th eigenvector)², and their Gaussian-broadened mixture.

Under `mpiexec` (analysis.mpi_reduce.World) each rank holds a shard of the batches and every HVP is summed
over ranks, so all ranks run the same iteration on the same vectors.
"""
import math
from typing import NamedTuple

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch.func import functional_call, grad, jvp

from training.errors import FaslandError
from training.probe import batch_weights, eval_mode

HVP_METHODS = ("double_backward", "forward_over_reverse")
# The faster of the two on ResNet18 (bench/hessian.py measures both in the same run).
DEFAULT_HVP = "double_backward"
# One set of defaults for the Python API below and for `fasland hessian` (analysis.commands.hessian),
# PyHessian's where it has one.
TOL = 1e-4            # relative error bound of each eigenvalue
MAX_ITER = 300        # Hessian-vector products per eigenvalue search at most
TRACE_SAMPLES = 100   # trace probe vectors (Hutchinson) or products (Hutch++)
TRACE_TOL = 1e-3      # the trace stops early once its stderr ≤ TRACE_TOL·|mean| (0: always TRACE_SAMPLES)
# Hutchinson by default: on a ResNet18 the bulk of the spectrum carries ‖H‖_F, so Hutch++'s sketch removes
# little variance and it needed 1.5× Hutchinson's products for the same standard error (bench/hessian.py);
# Hutch++ wins where a few eigenvalues dominate (the small networks of the tests).
TRACE_METHOD = "hutchinson"
DENSITY_ITER = 100    # Lanczos steps per SLQ run
KEEP_GRAPH_ELEMENTS = 2 ** 21


CHUNK = 16384       # vectors are padded to a multiple of CHUNK entries for the chunked dot product
SEGMENT = 32 * CHUNK  # reorthogonalization coefficients are summed in float64 over pieces this long


class Hessian:
    """The linear map v ↦ H v on flat vectors over the trainable parameters in `model.parameters()` order,
    in the model's dtype, zero-padded to a multiple of CHUNK entries (`dot`, `new`, `random` make and
    measure them). Inner products take a BLAS dot of each CHUNK-long piece in the model's dtype and sum
    the pieces in float64: a plain float32 dot product over 10⁷ entries (BLAS sdot) is off by ~1e-5 relative
    (a norm by 3e-4), enough to bias Ritz values; the chunked one is within ~1e-6 at the speed of one
    pass through memory (a third of the time of a batched matrix product of the same pieces).

    hvp: "double_backward" (∇(∇L · v)) or "forward_over_reverse" (torch.func.jvp of torch.func.grad).
    keep_graph: with double_backward, build the graph of ∇L once and differentiate it again for every v
    (as PyHessian does for one batch): saves a forward and a backward per HVP (about 40% of its time on a
    ResNet18) but holds the graph of all batches in memory, about 150× the input's bytes on a ResNet18.
    Default: when the data holds at most KEEP_GRAPH_ELEMENTS input numbers (≈1.3 GB of graph).
    world: an analysis.mpi_reduce.World whose ranks each pass their own shard of the batches.
    params: names of the parameters H is taken over (default: every trainable one); a subset gives the
    diagonal block H_BB = ∂²L/∂θ_B² with the other parameters held fixed.
    """

    def __init__(self, model, loss_fn, data, hvp: str = DEFAULT_HVP, world=None, keep_graph: bool | None = None,
                 params: list[str] | None = None):
        if hvp not in HVP_METHODS:
            raise FaslandError(f"unknown Hessian-vector product '{hvp}'; use one of {', '.join(HVP_METHODS)}")
        self.model, self.loss_fn, self.data, self.world = model, loss_fn, list(data), world
        chosen = [(n, p) for n, p in model.named_parameters() if p.requires_grad and (params is None or n in params)]
        self.names = [n for n, _ in chosen]
        self.params = [p for _, p in chosen]
        if not self.params:
            raise FaslandError("the model has no trainable parameters; the Hessian needs parameters with requires_grad=True")
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)
        self.padded = -(-self.dim // CHUNK) * CHUNK
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.weights = batch_weights(self.data, world)
        self._hvp = self._double_backward if hvp == "double_backward" else self._forward_over_reverse
        if keep_graph is None:
            keep_graph = sum(x.numel() for x, _ in self.data) <= KEEP_GRAPH_ELEMENTS
        self.keep_graph = hvp == "double_backward" and keep_graph
        self._graph = None      # [(w ∇L_b with graph, indices of the tensors that depend on θ)] per batch
        self.calls = 0          # HVPs so far: the cost every method is measured in
        self.progress = None    # a tqdm bar ticked once per HVP

    # ---- vectors ----------------------------------------------------------------------------------
    def new(self) -> torch.Tensor:
        return torch.zeros(self.padded, dtype=self.dtype, device=self.device)

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """⟨a, b⟩: CHUNK-long pieces in the vectors' dtype, their sum in float64."""
        pieces = [torch.dot(p, q) for p, q in zip(a.split(CHUNK), b.split(CHUNK))]
        return torch.stack(pieces).sum(dtype=torch.float64).item()

    def norm(self, a: torch.Tensor) -> float:
        return math.sqrt(max(self.dot(a, a), 0.0))

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of a flat vector."""
        return [t.view_as(p) for t, p in zip(v[:self.dim].split(self.numels), self.params)]

    def fill(self, out: torch.Tensor, tensors, w: float = 1.0, add: bool = False) -> torch.Tensor:
        """out ← w · tensors (or out += …), slice by slice with no flat temporary; None counts as zero."""
        for t, piece in zip(tensors, self.split(out)):
            if t is None:
                if not add:
                    piece.zero_()
            elif add:
                piece.add_(t, alpha=w)
            else:
                piece.copy_(t)
                if w != 1.0:
                    piece.mul_(w)
        return out

    def random(self, generator: torch.Generator, kind: str = "gaussian") -> torch.Tensor:
        """A seeded random vector (Gaussian or Rademacher ±1), drawn on the CPU so the same seed gives
        the same vector on any device."""
        v = self.new()
        if kind == "rademacher":
            r = torch.randint(0, 2, (self.dim,), generator=generator, dtype=torch.int8).to(self.dtype) * 2 - 1
        elif self.device.type == "cpu":     # straight into v: no dim-long temporary
            torch.randn(self.dim, generator=generator, dtype=self.dtype, out=v[:self.dim])
            return v
        else:
            r = torch.randn(self.dim, generator=generator, dtype=self.dtype)
        v[:self.dim] = r.to(self.device)
        return v

    def agree(self, obj):
        return obj if self.world is None else self.world.agree(obj)

    def _reduce(self, v):
        return v if self.world is None else self.world.sum(v)

    # ---- the loss, its gradient, its Hessian ---------------------------------------------------------
    def gradient(self) -> torch.Tensor:
        """∇L(θ), flat (read off the kept graph when there is one: no extra pass)."""
        g = self.new()
        with eval_mode(self.model):
            if self.keep_graph:
                for gb, _ in self._gradient_graph():
                    self.fill(g, [None if t is None else t.detach() for t in gb], add=True)
            else:
                for (x, y), w in zip(self.data, self.weights):
                    loss = self.loss_fn(self.model(x), y)
                    self.fill(g, torch.autograd.grad(loss, self.params, allow_unused=True), w, add=True)
        return self._reduce(g)

    def loss(self) -> float:
        """L(θ) over all ranks' batches."""
        with eval_mode(self.model), torch.no_grad():
            local = sum(w * self.loss_fn(self.model(x), y).item() for (x, y), w in zip(self.data, self.weights))
        return local if self.world is None else self.world.sum_scalar(local)

    def __call__(self, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """H v = Σ_b w_b ∇²L_b(θ) v (summed over ranks), written into `out` when given."""
        vs = self.split(v)
        hv = self.new() if out is None else out
        hv[self.dim:].zero_()           # the padding (`fill` writes the rest)
        with eval_mode(self.model):
            if self.keep_graph:
                for b, (g, used) in enumerate(self._gradient_graph()):
                    products = torch.autograd.grad([g[i] for i in used], self.params, grad_outputs=[vs[i] for i in used],
                                                   retain_graph=True, allow_unused=True) if used else [None] * len(vs)
                    self.fill(hv, products, add=b > 0)
            else:
                for b, ((x, y), w) in enumerate(zip(self.data, self.weights)):
                    self.fill(hv, self._hvp(x, y, vs), w, add=b > 0)
            if not self.data:
                hv.zero_()
        self.calls += 1
        if self.progress is not None:
            self.progress.update(1)
        return self._reduce(hv)

    def _first_order(self, x, y, w: float = 1.0):
        """w ∇L_b with its graph (per parameter, None where unused) and the indices of the gradient tensors
        that depend on θ — the others, absent or constant, contribute nothing to H v."""
        loss = w * self.loss_fn(self.model(x), y)
        g = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return g, [i for i, gi in enumerate(g) if gi is not None and gi.requires_grad]

    def _gradient_graph(self):
        if self._graph is None:
            self._graph = [self._first_order(x, y, w) for (x, y), w in zip(self.data, self.weights)]
        return self._graph

    def _double_backward(self, x, y, vs):
        """∇_θ (∇_θ L_b · v): reverse over reverse."""
        g, used = self._first_order(x, y)
        if not used:
            return [None] * len(self.params)
        return torch.autograd.grad([g[i] for i in used], self.params, grad_outputs=[vs[i] for i in used], allow_unused=True)

    def _forward_over_reverse(self, x, y, vs):
        """d/dt ∇L_b(θ + t v) at t = 0: torch.func.jvp of torch.func.grad over functional_call."""
        mine = set(self.names)
        fixed = {**dict(self.model.named_buffers()),
                 **{n: p.detach() for n, p in self.model.named_parameters() if n not in mine}}

        def loss_at(params):
            return self.loss_fn(functional_call(self.model, {**fixed, **dict(zip(self.names, params))}, (x,)), y)

        primals = tuple(p.detach() for p in self.params)
        return jvp(grad(loss_at), (primals,), (tuple(vs),))[1]

    def basis_vector(self, i: int) -> torch.Tensor:
        e = self.new()
        e[i] = 1
        return e

    def dense(self) -> torch.Tensor:
        """The full dim × dim matrix, column i = H e_i (dim HVPs: small models only)."""
        return torch.stack([self(self.basis_vector(i))[:self.dim] for i in range(self.dim)], dim=1)


class _Basis:
    """Orthonormal Lanczos vectors, stored as the rows of blocks of BLOCK rows (growing never copies). The
    row after the last stored one, `slot()`, is where the next vector is built in place (no copy to store it)."""

    BLOCK = 16

    def __init__(self, H: Hessian):
        self.H, self.blocks, self.n = H, [], 0

    def slot(self) -> torch.Tensor:
        """The storage of vector n + 1, not yet part of the basis (`keep` makes it so)."""
        if self.n == len(self.blocks) * self.BLOCK:
            self.blocks.append(torch.empty((self.BLOCK, self.H.padded), dtype=self.H.dtype, device=self.H.device))
        return self.blocks[-1][self.n % self.BLOCK]

    def keep(self) -> torch.Tensor:
        row = self.slot()
        self.n += 1
        return row

    def append(self, v: torch.Tensor) -> torch.Tensor:
        """Store a copy of v; returns the stored row."""
        self.slot().copy_(v)
        return self.keep()

    def orthogonalize_(self, w: torch.Tensor) -> float:
        """w ← w − V Vᵀ w in place for w = `slot()`, by classical Gram–Schmidt, a second pass when the first
        cancelled much of w (the Daniel–Gragg–Kaufman–Stewart test). Returns ‖w‖ after. The coefficients
        [Vᵀw, wᵀw] are taken SEGMENT entries at a time, each piece one matrix-vector product over the stored
        rows and w itself (one pass through memory), the pieces summed in float64: accurate to ~1e-7‖w‖²,
        which is all reorthogonalization and the test need; the returned norm is the accurate `H.norm`."""
        rows = [B[:min(self.BLOCK, self.n + 1 - i * self.BLOCK)] for i, B in enumerate(self.blocks)]  # V, then w
        for _ in range(2):
            coefficients = []
            for R in rows:
                c = torch.zeros(len(R), dtype=torch.float64, device=w.device)
                for k in range(0, self.H.padded, SEGMENT):
                    c += (R[:, k:k + SEGMENT] @ w[k:k + SEGMENT]).double()
                coefficients.append(c)
            before = math.sqrt(max(coefficients[-1][-1].item(), 0.0))
            coefficients[-1] = coefficients[-1][:-1]
            for R, c in zip(rows, coefficients):
                V = R[:len(c)]
                if len(V):
                    w.addmv_(V.T, c.to(w.dtype), alpha=-1)
            norm = self.H.norm(w)
            if norm >= 0.7071 * before:
                break
        return norm


class Krylov(NamedTuple):
    alpha: np.ndarray      # T's diagonal (m), float64
    beta: np.ndarray       # T's off-diagonal (m − 1)
    residual: float        # β_m = ‖r_m‖: every Ritz pair's residual is β_m |s_{m,i}|
    basis: "_Basis"        # the orthonormal Lanczos vectors V (rows)


def krylov(H: Hessian, v0: torch.Tensor, steps: int, stop=None) -> Krylov:
    """Lanczos tridiagonalization T = Vᵀ H V, V orthonormal with V e_1 = v0/‖v0‖, fully reorthogonalized.

    Stops after `steps`, when the Krylov space is invariant (β ≈ 0: T's eigenvalues are then exact
    eigenvalues of H), or when `stop(alpha, beta, beta_next)` is true — beta_next = ‖r_m‖, the residual
    scale of every Ritz pair. Each step builds v_{j+1} in place in its storage: H v_j − α_j v_j,
    orthogonalized against all of V.
    """
    steps = min(steps, H.dim)
    basis = _Basis(H)
    v = basis.append(v0)
    v.div_(H.norm(v))
    alpha, beta = [], []
    scale, b = 0.0, 0.0
    for j in range(steps):
        w = H(v, out=basis.slot())
        a = H.dot(w, v)
        alpha.append(a)
        b = basis.orthogonalize_(w.sub_(v, alpha=a))
        scale = max(scale, abs(a) + b + (beta[-1] if beta else 0.0))
        invariant = b <= 100 * torch.finfo(H.dtype).eps * max(scale, 1e-300)   # the products' precision
        if invariant:
            b = 0.0
        done = H.agree(invariant or j + 1 == steps or (stop is not None and stop(alpha, beta, b)))
        if done:
            break
        beta.append(b)
        v = basis.keep().div_(b)
    return Krylov(np.array(alpha, dtype=np.float64), np.array(beta, dtype=np.float64), float(b), basis)


def lanczos(H: Hessian, v0: torch.Tensor, steps: int, stop=None):
    """(alpha, beta) of `krylov`: T's diagonal and off-diagonal."""
    k = krylov(H, v0, steps, stop)
    return k.alpha, k.beta


def ritz_values(alpha, beta) -> np.ndarray:
    """Eigenvalues of the tridiagonal T(alpha, beta), ascending."""
    if len(alpha) == 1:
        return np.array(alpha, dtype=np.float64)
    return eigh_tridiagonal(alpha, beta, eigvals_only=True)


def ritz_pairs(alpha, beta, residual: float):
    """T = S diag(θ) Sᵀ (θ ascending) and, per Ritz value, its residual r_i = β_m |s_{m,i}| = ‖H y_i − θ_i y_i‖
    and error bound min(r_i, r_i²/gap_i), gap_i the distance to the nearest other Ritz value (the
    Kahan–Parlett–Jiang bound: for an isolated eigenvalue the error is quadratic in r)."""
    if len(alpha) == 1:
        theta, S = np.array(alpha, dtype=np.float64), np.ones((1, 1))
    else:
        theta, S = eigh_tridiagonal(np.asarray(alpha), np.asarray(beta))
    r = np.abs(residual * S[-1])
    gaps = np.array([np.min(np.abs(np.delete(theta, i) - theta[i])) if len(theta) > 1 else np.inf
                     for i in range(len(theta))])
    err = np.minimum(r, np.where(gaps > 0, r * r / np.maximum(gaps, 1e-300), np.inf))
    return theta, S, r, err


WHICH = ("largest", "smallest")


def ends(m: int, k: int, which: str) -> np.ndarray:
    """Indices into m ascending Ritz values of the k wanted: largest first (descending) or smallest first."""
    return np.arange(m - 1, m - 1 - k, -1) if which == "largest" else np.arange(k)


def _converged(k: int, tol: float, which: str = "largest", residual: bool = False):
    """Stop rule for the k wanted Ritz values θ_i: err_i ≤ tol·|θ_i| with err_i the error bound of
    `ritz_pairs` (or the residual ‖H y_i − θ_i y_i‖ itself when the eigenvectors are wanted)."""

    def stop(alpha, beta, b):
        m = len(alpha)
        if m < k + 1:
            return False
        theta, _, r, err = ritz_pairs(alpha, beta, b)
        idx = ends(m, k, which)
        return bool(np.all((r if residual else err)[idx] <= tol * np.abs(theta[idx])))

    return stop


def _top_converged(top_k: int, tol: float):
    """The stop rule of the top_k largest Ritz values (see `_converged`)."""
    return _converged(top_k, tol, "largest")


def lanczos_start(H: Hessian, generator: torch.Generator) -> torch.Tensor:
    """ĝ + r̂: the normalized loss gradient plus a normalized seeded Gaussian vector. The gradient of a
    trained network lies mostly in the top eigenspace of H (Gur-Ari et al. 2018), so the first Krylov
    vectors already carry the top eigenvectors: λ_max converges in 2–4 products where a random start needs
    about twice as many. The random part keeps every eigenvector in reach whatever the gradient is."""
    v = H.random(generator)
    v.div_(H.norm(v))
    g = H.gradient()
    gn = H.norm(g)
    return v.add_(g, alpha=1 / gn) if math.isfinite(gn) and gn > 0 else v


class Eigenvalues(list):
    """Eigenvalues (floats, in the order asked for) with their health, one entry per value: `error` the
    final error bound, `converged` whether it met the tolerance (False: stopped at max_iter), `products` the
    Hessian-vector products spent on it; `vectors` the unit eigenvectors (flat, padded) when asked for."""

    def __init__(self, values, error, converged, products, vectors=None):
        super().__init__(float(v) for v in values)
        self.error = [float(e) for e in error]
        self.converged = [bool(c) for c in converged]
        self.products = [int(p) for p in products]
        self.vectors = vectors

    def health(self) -> list[dict]:
        return [{"value": v, "error": e, "converged": c, "products": p}
                for v, e, c, p in zip(self, self.error, self.converged, self.products)]


def determined(value: float, error: float) -> bool:
    """A value is determined when its error bound is below its size."""
    return math.isfinite(value) and math.isfinite(error) and abs(error) < abs(value)


def with_error(value: float, error: float, digits: int = 6) -> str:
    """'v ± e', or 'undetermined (v ± e)' when the error is at least the value itself."""
    text = f"{value:.{digits}g} ± {error:.2g}"
    return text if determined(value, error) else f"undetermined ({text})"


def lanczos_eigenvalues(H: Hessian, k: int, tol: float, seed: int = 0, max_iter: int = MAX_ITER, start: str = "gradient",
                        which: str = "largest", vectors: bool = False) -> Eigenvalues:
    """The k largest (descending) or smallest (ascending) eigenvalues of H by Lanczos, stopped once each
    has error bound ≤ tol·|θ| (with `vectors`: residual ‖Hy − θy‖ ≤ tol·|θ|, and the Ritz vectors y = V s)."""
    if which not in WHICH:
        raise FaslandError(f"unknown end of the spectrum '{which}'; use largest or smallest")
    if start not in ("gradient", "random"):
        raise FaslandError(f"unknown Lanczos start '{start}'; use gradient or random")
    g = torch.Generator().manual_seed(seed)
    v0 = lanczos_start(H, g) if start == "gradient" else H.random(g)
    before = H.calls
    run = krylov(H, v0, max(max_iter, k + 1), _converged(k, tol, which, residual=vectors))
    theta, S, r, err = ritz_pairs(run.alpha, run.beta, run.residual)
    idx = ends(len(theta), min(k, len(theta)), which)
    bound = r if vectors else err
    found = None
    if vectors:
        rows = [row for block in run.basis.blocks for row in block][:len(theta)]
        found = []
        for i in idx:
            y = H.new()
            for row, s in zip(rows, S[:, i]):
                y.add_(row, alpha=float(s))
            found.append(y.div_(H.norm(y)))
    products = H.calls - before
    return Eigenvalues(theta[idx], bound[idx], bound[idx] <= tol * np.abs(theta[idx]), [products] * len(idx), found)


def top_eigenvalues(H: Hessian, top_k: int = 1, tol: float = TOL, method: str = "lanczos", seed: int = 0,
                    max_iter: int = MAX_ITER, start: str = "gradient", which: str = "largest", vectors: bool = False) -> Eigenvalues:
    """The top_k eigenvalues of the operator H, descending, or with which="smallest" the smallest,
    ascending (see `hessian_eigenvalues`)."""
    if top_k < 1 or top_k > H.dim:
        flag = "--top-k" if which == "largest" else "--bottom-k"
        raise FaslandError(f"{flag} {top_k} must be between 1 and the number of parameters ({H.dim})")
    if not tol > 0:
        raise FaslandError(f"--tol {tol} must be positive; pass e.g. --tol 1e-4")
    if method == "lanczos":
        return lanczos_eigenvalues(H, top_k, tol, seed, max_iter, start, which, vectors)
    if method == "power":
        if which != "largest" or vectors:
            raise FaslandError("power iteration gives the largest eigenvalues only; use the lanczos solver for the smallest or for eigenvectors")
        return power_iteration(H, top_k, tol, torch.Generator().manual_seed(seed), max_iter)
    raise FaslandError(f"unknown eigenvalue method '{method}'; use lanczos or power")


def power_iteration(H: Hessian, top_k: int, tol: float, generator: torch.Generator, max_iter: int = MAX_ITER) -> Eigenvalues:
    """PyHessian's method: for each i, iterate v ← Hv/‖Hv‖ on the complement of the eigenvectors found so
    far, λ = vᵀHv, until |Δλ| / (|λ| + 1e-6) < tol. Finds the eigenvalues largest in magnitude; the error
    reported is the last |Δλ|."""
    found = []   # (λ, |Δλ|, converged, products)
    vectors = []
    for _ in range(top_k):
        v = H.random(generator)
        lam, change, done, before = None, math.inf, False, H.calls
        for _ in range(max_iter):
            for u in vectors:
                v.sub_(u, alpha=H.dot(u, v))
            v.div_(H.norm(v))
            hv = H(v)
            new = H.dot(hv, v)
            v = hv.div_(H.norm(hv))
            if lam is not None:
                change = abs(new - lam)
            done = H.agree(lam is not None and change / (abs(lam) + 1e-6) < tol)
            lam = new
            if done:
                break
        found.append((lam, change, done, H.calls - before))
        vectors.append(v)
    found.sort(key=lambda f: f[0], reverse=True)
    return Eigenvalues(*zip(*found))


def hessian_eigenvalues(model, loss_fn, data, top_k: int = 1, tol: float = TOL, method: str = "lanczos", seed: int = 0,
                        max_iter: int = MAX_ITER, start: str = "gradient", hvp: str = DEFAULT_HVP, keep_graph: bool | None = None,
                        world=None, progress=None, which: str = "largest", vectors: bool = False) -> Eigenvalues:
    """The top_k largest eigenvalues of ∇²L(θ), descending — or with which="smallest" the top_k smallest,
    ascending (the most negative first) — each with its health (`Eigenvalues`).

    method "lanczos": extreme Ritz values, stopped once each has relative error bound ≤ tol; started from
    the gradient plus a seeded random vector (start="gradient") or a random vector alone; `vectors` also
    returns the unit eigenvectors (stopped on the residual ‖Hv − λv‖ ≤ tol·|λ| instead).
    method "power": PyHessian's power iteration with deflation (largest in magnitude, relative change < tol).
    """
    H = Hessian(model, loss_fn, data, hvp, world, keep_graph)
    H.progress = progress
    return top_eigenvalues(H, top_k, tol, method, seed, max_iter, start, which, vectors)


def extreme_eigenvalues(H: Hessian, tol: float = 1e-2, max_iter: int = 30, seed: int = 0) -> Eigenvalues:
    """[λ_max, λ_min] of H from one Lanczos run (gradient + random start), stopped once both error bounds
    are ≤ tol·max(|λ_max|, |λ_min|) (the spectrum's scale: λ_min may be ~0) or after max_iter products."""
    g = torch.Generator().manual_seed(seed)
    before = H.calls

    def stop(alpha, beta, b):
        if len(alpha) < 3:
            return False
        theta, _, _, err = ritz_pairs(alpha, beta, b)
        return bool(max(err[0], err[-1]) <= tol * max(abs(theta[0]), abs(theta[-1])))

    run = krylov(H, lanczos_start(H, g), max(max_iter, 2), stop)
    theta, _, _, err = ritz_pairs(run.alpha, run.beta, run.residual)
    scale = max(abs(theta[0]), abs(theta[-1]))
    pick = [len(theta) - 1, 0]
    return Eigenvalues(theta[pick], err[pick], err[pick] <= tol * scale, [H.calls - before] * 2)


CURVATURE = ("lambda_max", "lambda_min", "convexity_ratio")


def curvature(model, loss_fn, data, tol: float = 1e-2, max_iter: int = 30, seed: int = 0, hvp: str = DEFAULT_HVP) -> dict:
    """λ_max, λ_min of ∇²L at the model's current weights and |λ_min/λ_max| (the reference's convexity
    map), plus `curvature_converged` (1 when both met tol) and `curvature_products`."""
    H = Hessian(model, loss_fn, data, hvp, keep_graph=False)
    e = extreme_eigenvalues(H, tol, max_iter, seed)
    lam_max, lam_min = e
    return {"lambda_max": lam_max, "lambda_min": lam_min,
            "convexity_ratio": abs(lam_min / lam_max) if lam_max != 0 else math.inf,
            "curvature_converged": float(all(e.converged)), "curvature_products": float(e.products[0])}


def curvature_measure(loss_fn, data, tol: float = 1e-2, max_iter: int = 30, seed: int = 0):
    """`curvature` of a model on fixed data, as a surface measure (model → {name: float})."""
    return lambda model: curvature(model, loss_fn, data, tol, max_iter, seed)


def hessian_directions(model, loss_fn, data, norm: str = "filter", ignore: str = "biasbn", tol: float = 1e-3,
                       seed: int = 0, max_iter: int = MAX_ITER, ndim: int = 2, hvp: str = DEFAULT_HVP, world=None,
                       progress=None, ynorm: str | None = None, yignore: str | None = None):
    """Surface directions along the top Hessian eigenvectors: x = v₁, y = v₂ (ndim = 2), each a unit
    eigenvector with ‖Hv − λv‖ ≤ tol·|λ| cut into the model's parameter shapes (parameters that are not
    trainable get 0), then normalized against θ like a random direction (landscape.directions; y by
    ynorm/yignore, default norm/ignore); the eigenvalues are attributes, their health is in the recipe."""
    from landscape.directions import eigenvector_directions

    H = Hessian(model, loss_fn, data, hvp, world)
    H.progress = progress
    e = top_eigenvalues(H, ndim, tol, seed=seed, max_iter=max_iter, vectors=True)
    vectors = [[dict(zip(H.names, H.split(v))).get(n) for n, _ in model.named_parameters()] for v in e.vectors]
    return eigenvector_directions(model, vectors, list(e), norm, ignore, e.health(), ynorm, yignore)


class Trace(NamedTuple):
    mean: float       # estimate of tr H
    stderr: float     # standard error of the mean (0 for the exact trace)
    samples: list     # vᵀHv per probe vector (H_ii per basis vector; Hutch++: the residual part's samples)
    method: str = "hutchinson"
    products: int = 0     # Hessian-vector products spent
    low_rank: float = 0.0  # Hutch++: tr(QᵀHQ), the exact part on the sketched subspace


def trace_estimate(H: Hessian, n_samples: int = TRACE_SAMPLES, tol: float = TRACE_TOL, seed: int = 0, min_samples: int = 10) -> Trace:
    """Hutchinson: tr H = E[vᵀHv] over Rademacher v; stops after n_samples or once stderr ≤ tol·|mean|."""
    if n_samples < 2:
        raise FaslandError(f"the trace needs at least 2 Hutchinson samples to give a standard error, not {n_samples}")
    g = torch.Generator().manual_seed(seed)
    samples, before = [], H.calls
    for i in range(n_samples):
        v = H.random(g, "rademacher")
        samples.append(H.dot(v, H(v)))
        mean, se = _mean_stderr(samples)
        if H.agree(i + 1 >= min_samples and se <= tol * abs(mean)):
            break
    return Trace(*_mean_stderr(samples), samples, "hutchinson", H.calls - before)


def hutchpp(H: Hessian, n_products: int = TRACE_SAMPLES, tol: float = TRACE_TOL, seed: int = 0, min_samples: int = 10) -> Trace:
    """Hutch++ (Meyer, Musco, Musco, Woodruff 2021): with k = n_products/3 Gaussian vectors S, Q = orth(HS);
    tr H = tr(QᵀHQ) + tr((I − QQᵀ) H (I − QQᵀ)), the first exact (k products), the second by Hutchinson
    on the deflated Rademacher vectors (I − QQᵀ)g (the remaining products, stopped early once its
    stderr ≤ tol·|tr|).
    The standard error is the residual Hutchinson part's, given Q: the sketched part has no variance then.
    For a spectrum with a few large eigenvalues (a trained network's) the residual's variance is far
    below H's, so Hutch++ reaches Hutchinson's error with fewer products."""
    k = n_products // 3
    if k < 1 or n_products - 2 * k < 2:
        raise FaslandError(f"Hutch++ needs at least 4 Hessian-vector products (a sketch and 2 residual samples), not {n_products}")
    g = torch.Generator().manual_seed(seed)
    before = H.calls
    Q = _Basis(H)
    for _ in range(min(k, H.dim)):
        w = H(H.random(g), out=Q.slot())        # Gaussian: a square Rademacher sketch can be singular
        scale = H.norm(w)
        norm = Q.orthogonalize_(w)
        if norm > math.sqrt(torch.finfo(H.dtype).eps) * max(scale, 1e-300):   # else left to the residual part:
            Q.keep().div_(norm)                     # a vector cancelled further is not reliably orthogonal
    rows = [row for block in Q.blocks for row in block][:Q.n]
    low_rank = sum(H.dot(q, H(q)) for q in rows)
    samples = []
    full = Q.n >= H.dim      # Q spans everything: the residual is zero
    for i in range(n_products - 2 * k):
        v = Q.slot()
        v.copy_(H.random(g, "rademacher"))
        Q.orthogonalize_(v)
        samples.append(0.0 if full else H.dot(v, H(v)))
        mean, se = _mean_stderr(samples)
        if H.agree(i + 1 >= min_samples and se <= tol * abs(low_rank + mean)):
            break
    mean, se = _mean_stderr(samples)
    return Trace(low_rank + mean, se, samples, "hutch++", H.calls - before, low_rank)


def _mean_stderr(samples):
    x = np.asarray(samples, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("inf")


def exact_trace(H: Hessian) -> Trace:
    """Σ_i e_iᵀ H e_i over every basis vector (dim HVPs: small models only)."""
    diag = [H(H.basis_vector(i))[i].item() for i in range(H.dim)]
    return Trace(float(np.sum(diag)), 0.0, diag, "exact", H.dim)


TRACE_METHODS = ("hutch++", "hutchinson", "exact")


def trace(H: Hessian, n_samples: int = TRACE_SAMPLES, tol: float = TRACE_TOL, seed: int = 0, method: str = TRACE_METHOD) -> Trace:
    """tr H by `method` with at most n_samples products (see `hessian_trace`)."""
    if method == "exact":
        return exact_trace(H)
    if method == "hutchinson":
        return trace_estimate(H, n_samples, tol, seed)
    if method == "hutch++":
        return hutchpp(H, n_samples, tol, seed)
    raise FaslandError(f"unknown trace method '{method}'; use one of {', '.join(TRACE_METHODS)}")


def hessian_trace(model, loss_fn, data, n_samples: int = TRACE_SAMPLES, tol: float = TRACE_TOL, seed: int = 0, method: str = TRACE_METHOD,
                  hvp: str = DEFAULT_HVP, keep_graph: bool | None = None, world=None, progress=None) -> Trace:
    """tr ∇²L(θ) as Trace(mean, stderr, samples, …) from at most n_samples Hessian-vector products:
    Hutchinson's estimator (default, see TRACE_METHOD), Hutch++ (method "hutch++": fewer products where a
    few eigenvalues dominate ‖H‖_F), or exactly from every basis vector (method "exact", one HVP per
    parameter)."""
    H = Hessian(model, loss_fn, data, hvp, world, keep_graph)
    H.progress = progress
    return trace(H, n_samples, tol, seed, method)


class Density(NamedTuple):
    nodes: list       # per run: eigenvalues θ_j of the Lanczos tridiagonal T
    weights: list     # per run: τ_j = (e_1ᵀ s_j)², summing to 1
    grid: np.ndarray  # where the broadened density is evaluated
    density: np.ndarray  # (1/runs) Σ_runs Σ_j τ_j N(t; θ_j, sigma²) on the grid
    sigma: float      # the Gaussian's standard deviation


def slq(H: Hessian, n_iter: int = DENSITY_ITER, n_runs: int = 1, seed: int = 0) -> tuple[list, list]:
    """Stochastic Lanczos quadrature: n_runs Lanczos runs of n_iter steps from normalized Rademacher
    vectors v; each gives nodes θ_j and weights τ_j with Σ_j τ_j f(θ_j) ≈ vᵀ f(H) v / vᵀv (exact for
    polynomials of degree < 2·n_iter), whose mean over v is tr f(H) / dim."""
    g = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(n_runs):
        alpha, beta = lanczos(H, H.random(g, "rademacher"), n_iter)
        if len(alpha) == 1:
            theta, S = alpha.copy(), np.ones((1, 1))
        else:
            theta, S = eigh_tridiagonal(alpha, beta)
        nodes.append(theta.tolist())
        weights.append((S[0] ** 2).tolist())
    return nodes, weights


def broaden(nodes, weights, grid_size: int = 1000, sigma: float | None = None, sigma_rel: float = 0.01):
    """The Gaussian mixture (1/runs) Σ_runs Σ_j τ_j N(t; θ_j, σ²) on a grid reaching 6σ past the extreme nodes,
    σ = sigma_rel × (spread of the nodes) unless given; the mixture integrates to 1."""
    flat = np.concatenate([np.asarray(n, dtype=np.float64) for n in nodes])
    lo, hi = flat.min(), flat.max()
    if sigma is None:
        sigma = sigma_rel * max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, grid_size)
    density = np.zeros(grid_size)
    for theta, tau in zip(nodes, weights):
        theta, tau = np.asarray(theta)[:, None], np.asarray(tau)[:, None]
        density += (tau * np.exp(-0.5 * ((grid[None] - theta) / sigma) ** 2)).sum(0)
    density /= len(nodes) * sigma * math.sqrt(2 * math.pi)
    return grid, density, float(sigma)


def hessian_density(model, loss_fn, data, n_iter: int = DENSITY_ITER, n_runs: int = 1, seed: int = 0, grid_size: int = 1000,
                    sigma: float | None = None, sigma_rel: float = 0.01, hvp: str = DEFAULT_HVP,
                    keep_graph: bool | None = None, world=None, progress=None) -> Density:
    """The spectral density of ∇²L(θ) by stochastic Lanczos quadrature (as PyHessian's `density`):
    per-run nodes and weights, and their Gaussian-broadened mixture on a grid."""
    if n_iter < 1 or n_runs < 1:
        raise FaslandError(f"the density needs at least one Lanczos step and one run, not {n_iter} steps × {n_runs} runs")
    H = Hessian(model, loss_fn, data, hvp, world, keep_graph)
    H.progress = progress
    nodes, weights = slq(H, n_iter, n_runs, seed)
    grid, density, sigma = broaden(nodes, weights, grid_size, sigma, sigma_rel)
    return Density(nodes, weights, grid, density, sigma)


# ---- per-block sharpness and sampling uncertainty ----------------------------------------------------

def parameter_blocks(model, blocks=None) -> dict[str, list[str]]:
    """{block: names of its trainable parameters}. Default: one block per top-level child module that has
    trainable parameters (stem, layer1…layer4, head for FASNet), plus "(root)" for the root's own.
    `blocks`: a list of submodule names (each block the parameters under that prefix) or a dict
    {block: [parameter names]}."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(blocks, dict):
        out = {b: list(ps) for b, ps in blocks.items()}
        unknown = [p for ps in out.values() for p in ps if p not in names]
        if unknown:
            raise FaslandError(f"block parameter '{unknown[0]}' is not a trainable parameter of the model; name parameters as model.named_parameters() does")
        return out
    if blocks is None:
        out = {}
        for n in names:
            out.setdefault(n.split(".", 1)[0] if "." in n else "(root)", []).append(n)
        return out
    out = {b: [n for n in names if n == b or n.startswith(b + ".")] for b in blocks}
    empty = [b for b, ps in out.items() if not ps]
    if empty:
        raise FaslandError(f"block '{empty[0]}' holds no trainable parameter; name submodules of the model such as "
                           f"{', '.join(parameter_blocks(model))}")
    return out


def block_sharpness(model, loss_fn, data, blocks=None, tol: float = 1e-3, seed: int = 0, trace_samples: int = 30,
                    trace_method: str = TRACE_METHOD, max_iter: int = 100, hvp: str = DEFAULT_HVP, world=None,
                    progress=None) -> dict:
    """{block: {"lambda_max", "trace", "trace_stderr", "parameters", "health"}} for the Hessian restricted to
    each block's parameters, H_BB = ∂²L/∂θ_B² (the others held at θ): λ_max by Lanczos to tol (with its
    error bound, converged flag and products in `health`), tr H_BB by `trace_method` from trace_samples
    products (trace_samples 0: no trace, "trace" and "trace_stderr" None). Blocks as `parameter_blocks`."""
    out = {}
    for name, params in parameter_blocks(model, blocks).items():
        H = Hessian(model, loss_fn, data, hvp, world, params=params)
        H.progress = progress
        e = top_eigenvalues(H, 1, tol, seed=seed, max_iter=max_iter)
        t = trace(H, trace_samples, 0.0, seed, trace_method) if trace_samples else None
        out[name] = {"lambda_max": e[0], "trace": t.mean if t else None, "trace_stderr": t.stderr if t else None, "parameters": H.dim,
                     "health": {**e.health()[0], "trace_products": t.products if t else 0}}
    return out


def samples_of(data) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All samples of a list of (x, y) batches, concatenated, and the largest batch size."""
    if not data:
        raise FaslandError("the data for the Hessian holds no samples; pass a probe with at least one image per domain")
    return torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]), max(len(y) for _, y in data)


def rebatch(x, y, index, batch_size: int) -> list:
    return [(x[index[i:i + batch_size]], y[index[i:i + batch_size]]) for i in range(0, len(index), batch_size)]


def disjoint_subsets(data, n_subsets: int, seed: int = 0) -> list[list]:
    """The samples in a seeded random order, dealt into n_subsets disjoint subsets of (nearly) equal size,
    each re-batched at the data's batch size."""
    x, y, bs = samples_of(data)
    if not 2 <= n_subsets <= len(y):
        raise FaslandError(f"--sample-batches {n_subsets} must be between 2 and the number of probe samples ({len(y)})")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(x.device)
    return [rebatch(x, y, order[b::n_subsets], bs) for b in range(n_subsets)]


def growing_counts(n: int) -> list[int]:
    """1, 2, 4, … (powers of two below n), then n."""
    counts = [2 ** j for j in range(max(n - 1, 1).bit_length()) if 2 ** j < n]
    return counts + [n]


def spread(values) -> dict:
    """The per-subset values with analysis.intervals.subset_interval: mean, std (ddof 1), n and the central
    95% interval of the values (the spread of an estimate made on one subset's worth of samples)."""
    from analysis.intervals import subset_interval

    return {"values": [float(v) for v in values], **subset_interval(values)}


def sampling_uncertainty(model, loss_fn, data, n_subsets: int = 4, top_k: int = 1, with_trace: bool = False,
                         tol: float = 1e-3, seed: int = 0, trace_samples: int = 30, trace_method: str = TRACE_METHOD,
                         max_iter: int = MAX_ITER, growth: bool = True, hvp: str = DEFAULT_HVP, world=None, progress=None) -> dict:
    """How much λ_1…λ_k (and tr H) depend on the sample: their values on n_subsets disjoint random subsets
    of the samples with `spread` (mean, std, central 95% interval), and λ_max (and the trace) on the first n samples
    of one seeded order for n = 1, 2, 4, … up to all of them (nested sets: the curve shows whether the
    estimate has settled). Under MPI each rank deals its own shard."""

    def measure(batches):
        H = Hessian(model, loss_fn, batches, hvp, world)
        H.progress = progress
        e = top_eigenvalues(H, top_k, tol, seed=seed, max_iter=max_iter)
        r = {"eigenvalues": list(e), "health": e.health()}
        if with_trace:
            t = trace(H, trace_samples, 0.0, seed, trace_method)
            r["trace"], r["trace_stderr"] = t.mean, t.stderr
        return r

    parts = disjoint_subsets(data, n_subsets, seed)
    subsets = [measure(b) for b in parts]
    out = {"subsets": n_subsets, "samples": [sum(len(y) for _, y in b) for b in parts],
           "eigenvalues": [spread([s["eigenvalues"][i] for s in subsets]) for i in range(top_k)],
           "health": [s["health"] for s in subsets]}
    out["lambda_max"] = out["eigenvalues"][0]
    if with_trace:
        out["trace"] = spread([s["trace"] for s in subsets])
    if growth:
        x, y, bs = samples_of(data)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(x.device)
        total = len(y) if world is None else int(world.sum_scalar(len(y)))
        out["growth"] = []
        for n in growing_counts(total):
            r = measure(rebatch(x, y, order[:max(1, round(n * len(y) / total))], bs))
            out["growth"].append({"samples": n, "lambda_max": r["eigenvalues"][0], "converged": r["health"][0]["converged"],
                                  **({"trace": r["trace"], "trace_stderr": r["trace_stderr"]} if with_trace else {})})
    return out
