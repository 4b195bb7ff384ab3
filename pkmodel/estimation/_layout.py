"""Private: a PopulationProblem compiled to arrays, and the maps between parameter spaces.

Three parameter spaces are used:

* *natural*: θ (all thetas), Ω (q × q, block diagonal), σ (residual SDs);
* *optimiser* ``x``: the free parameters transformed to be unconstrained and of order one —
  ``log(θ − lower)`` etc. for bounded thetas, θ/|θ₀| for unbounded ones, per Ω block the Cholesky factor
  (log of its diagonal, off-diagonals scaled by the initial SDs), ``log σ``;
* *covariance* ``p``: the free natural parameters — thetas, Ω elements (variances, and covariances of
  full blocks), σ as SDs — in which the covariance step differentiates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pkmodel.errors import EstimationError
from pkmodel.estimation.problem import PopulationProblem

__all__ = ["DataArrays", "ParameterSpace"]


@dataclass(frozen=True)
class _Block:
    index: np.ndarray  # eta indices (k,)
    fixed: bool
    initial: np.ndarray  # (k, k)

    @property
    def size(self) -> int:
        return int(self.index.shape[0])


class ParameterSpace:
    """Maps between natural parameters, the optimiser vector ``x`` and the covariance vector ``p``."""

    def __init__(self, problem: PopulationProblem):
        thetas = problem.thetas
        self.theta_names = tuple(t.name for t in thetas)
        self.theta_initial = np.array([t.initial for t in thetas], dtype=float)
        self.theta_lower = np.array([t.lower for t in thetas], dtype=float)
        self.theta_upper = np.array([t.upper for t in thetas], dtype=float)
        self.theta_fixed = np.array([t.fixed for t in thetas], dtype=bool)
        kinds = []
        scales = []
        for t in thetas:
            lo, hi = math.isfinite(t.lower), math.isfinite(t.upper)
            if lo and hi:
                kinds.append("logit")
            elif lo:
                kinds.append("log")
            elif hi:
                kinds.append("neglog")
            else:
                kinds.append("identity")
            scales.append(abs(t.initial) if (not lo and not hi and t.initial != 0) else 1.0)
        self.theta_kind = tuple(kinds)
        self.theta_scale = np.array(scales)
        self._kind_masks = [
            np.array([k == kind for k in kinds], dtype=bool) for kind in ("log", "neglog", "logit")
        ]

        self.eta_names = problem.eta_names
        q = len(self.eta_names)
        self.n_eta = q
        omega0 = np.zeros((q, q))
        blocks: list[_Block] = []
        start = 0
        for block in problem.omega:
            k = len(block.etas)
            index = np.arange(start, start + k)
            omega0[np.ix_(index, index)] = block.initial
            if block.diagonal:
                blocks.extend(
                    _Block(np.array([i]), block.fixed, block.initial[[j]][:, [j]])
                    for j, i in enumerate(index)
                )
            else:
                blocks.append(_Block(index, block.fixed, np.array(block.initial)))
            start += k
        self.blocks = tuple(blocks)
        self.omega_initial = omega0
        self.eta_scale = np.sqrt(np.diag(omega0)) if q else np.zeros(0)

        names, initial, fixed = [], [], []
        self.sigma_output = []
        for r in problem.residual:
            for component, name in zip(r.components, r.parameter_names, strict=True):
                names.append(name)
                initial.append(float(r.additive if component == "add" else r.proportional))
                fixed.append(r.fix_additive if component == "add" else r.fix_proportional)
                self.sigma_output.append((r.output, component))
        self.sigma_names = tuple(names)
        self.sigma_initial = np.array(initial, dtype=float)
        self.sigma_fixed = np.array(fixed, dtype=bool)

        # names of the free parameters in covariance (natural) order
        p_names = [n for n, f in zip(self.theta_names, self.theta_fixed, strict=True) if not f]
        for block in self.blocks:
            if block.fixed:
                continue
            for a in range(block.size):
                for b in range(a + 1):
                    i, j = self.eta_names[block.index[a]], self.eta_names[block.index[b]]
                    p_names.append(f"omega({i})" if a == b else f"omega({i},{j})")
        p_names += [n for n, f in zip(self.sigma_names, self.sigma_fixed, strict=True) if not f]
        self.p_names = tuple(p_names)
        self.n_free = len(p_names)

    # ---- thetas -------------------------------------------------------------------------------
    def _theta_to_t(self, theta: np.ndarray) -> np.ndarray:
        """θ (..., n_theta) → the optimiser's scale (infinite on or outside a bound)."""
        lo, hi = self.theta_lower, self.theta_upper
        with np.errstate(divide="ignore", invalid="ignore"):
            u = (theta - lo) / (hi - lo)
            return np.select(
                self._kind_masks,
                [
                    np.where(theta > lo, np.log(theta - lo), -np.inf),
                    np.where(theta < hi, np.log(hi - theta), -np.inf),
                    np.where((u > 0) & (u < 1), np.log(u / (1.0 - u)), np.copysign(np.inf, u - 0.5)),
                ],
                theta / self.theta_scale,
            )

    def _t_to_theta(self, t: np.ndarray) -> np.ndarray:
        """The optimiser's scale (..., n_theta) → θ."""
        lo, hi = self.theta_lower, self.theta_upper
        with np.errstate(over="ignore", invalid="ignore"):
            grow = np.exp(np.minimum(t, 700.0))
            return np.select(
                self._kind_masks,
                [lo + grow, hi - grow, lo + (hi - lo) / (1.0 + np.exp(-np.clip(t, -700.0, 700.0)))],
                t * self.theta_scale,
            )

    # ---- optimiser space x -------------------------------------------------------------------
    def initial(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The initial natural parameters (θ, Ω, σ)."""
        return self.theta_initial.copy(), self.omega_initial.copy(), self.sigma_initial.copy()

    def to_x(self, theta: np.ndarray, omega: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Natural parameters → optimiser vector (free parameters only).

        Vectorised: θ (..., n_theta), Ω (..., q, q), σ (..., n_sigma) → x (..., n_x).

        Raises
        ------
        numpy.linalg.LinAlgError
            If a free block of Ω is not positive definite.
        """
        theta, omega, sigma = (np.asarray(v, dtype=float) for v in (theta, omega, sigma))
        parts = [self._theta_to_t(theta)[..., ~self.theta_fixed]]
        for block in self.blocks:
            if block.fixed:
                continue
            chol = np.linalg.cholesky(omega[..., block.index[:, None], block.index[None, :]])
            scale = self.eta_scale[block.index]
            for a in range(block.size):
                for b in range(a + 1):
                    value = np.log(chol[..., a, a]) if a == b else chol[..., a, b] / scale[a]
                    parts.append(value[..., None])
        parts.append(np.log(sigma[..., ~self.sigma_fixed]))
        return np.concatenate(parts, axis=-1)

    def from_x(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Optimiser vector → natural parameters (θ, Ω, σ).

        Vectorised: x (..., n_x) → θ (..., n_theta), Ω (..., q, q), σ (..., n_sigma).
        """
        x = np.asarray(x, dtype=float)
        lead = x.shape[:-1]
        free = ~self.theta_fixed
        n = int(np.sum(free))
        t = np.zeros((*lead, self.theta_initial.size))
        t[..., free] = x[..., :n]
        theta = np.where(self.theta_fixed, self.theta_initial, self._t_to_theta(t))
        pos = n
        omega = np.array(np.broadcast_to(self.omega_initial, (*lead, *self.omega_initial.shape)))
        for block in self.blocks:
            if block.fixed:
                continue
            k = block.size
            chol = np.zeros((*lead, k, k))
            scale = self.eta_scale[block.index]
            for a in range(k):
                for b in range(a + 1):
                    chol[..., a, b] = (
                        np.exp(np.minimum(x[..., pos], 350.0)) if a == b else x[..., pos] * scale[a]
                    )
                    pos += 1
            omega[..., block.index[:, None], block.index[None, :]] = chol @ np.swapaxes(chol, -1, -2)
        sigma = np.array(np.broadcast_to(self.sigma_initial, (*lead, self.sigma_initial.size)))
        n = int(np.sum(~self.sigma_fixed))
        sigma[..., ~self.sigma_fixed] = np.exp(np.minimum(x[..., pos : pos + n], 350.0))
        return theta, omega, sigma

    # ---- covariance space p --------------------------------------------------------------------
    def to_p(self, theta: np.ndarray, omega: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Natural parameters → free natural vector (θ, Ω elements, σ SDs)."""
        parts = [theta[~self.theta_fixed]]
        for block in self.blocks:
            if block.fixed:
                continue
            sub = omega[np.ix_(block.index, block.index)]
            parts.append(np.array([sub[a, b] for a in range(block.size) for b in range(a + 1)]))
        parts.append(sigma[~self.sigma_fixed])
        return np.concatenate(parts)

    def from_p(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Free natural vector → natural parameters (θ, Ω, σ); Ω may be indefinite.

        Vectorised: p (..., n_p) → θ (..., n_theta), Ω (..., q, q), σ (..., n_sigma).
        """
        p = np.asarray(p, dtype=float)
        lead = p.shape[:-1]
        free = ~self.theta_fixed
        n = int(np.sum(free))
        theta = np.array(np.broadcast_to(self.theta_initial, (*lead, self.theta_initial.size)))
        theta[..., free] = p[..., :n]
        pos = n
        omega = np.array(np.broadcast_to(self.omega_initial, (*lead, *self.omega_initial.shape)))
        for block in self.blocks:
            if block.fixed:
                continue
            for a in range(block.size):
                for b in range(a + 1):
                    i, j = block.index[a], block.index[b]
                    omega[..., i, j] = omega[..., j, i] = p[..., pos]
                    pos += 1
        sigma = np.array(np.broadcast_to(self.sigma_initial, (*lead, self.sigma_initial.size)))
        n = int(np.sum(~self.sigma_fixed))
        sigma[..., ~self.sigma_fixed] = p[..., pos : pos + n]
        return theta, omega, sigma

    def p_scale(self, p: np.ndarray, omega: np.ndarray) -> np.ndarray:
        """A natural magnitude of each free parameter (for relative finite-difference steps)."""
        scale = np.abs(p).astype(float)
        pos = int(np.sum(~self.theta_fixed))
        scale[:pos] = np.where(scale[:pos] > 0, scale[:pos], 1.0)
        for block in self.blocks:
            if block.fixed:
                continue
            for a in range(block.size):
                for b in range(a + 1):
                    i, j = block.index[a], block.index[b]
                    scale[pos] = math.sqrt(omega[i, i] * omega[j, j])
                    pos += 1
        return scale

    def theta_in_bounds(self, theta: np.ndarray) -> bool | np.ndarray:
        """True when every free theta lies strictly inside its bounds (θ (..., n_theta) → bool (...))."""
        free = ~self.theta_fixed
        theta = np.asarray(theta)[..., free]
        inside = np.all((theta > self.theta_lower[free]) & (theta < self.theta_upper[free]), axis=-1)
        return bool(inside) if inside.ndim == 0 else inside


class DataArrays:
    """Observations of all subjects, padded to (n_subjects, max n_obs)."""

    def __init__(self, problem: PopulationProblem, space: ParameterSpace):
        subjects = problem.subjects
        self.n_subjects = len(subjects)
        self.n_obs_subject = np.array([s.n_obs for s in subjects])
        nmax = int(self.n_obs_subject.max())
        self.nmax = nmax
        shape = (self.n_subjects, nmax)
        self.mask = np.zeros(shape, dtype=bool)
        self.y = np.zeros(shape)
        self.censored = np.zeros(shape, dtype=bool)
        self.is_log = np.zeros(shape, dtype=bool)
        self.add_index = np.full(shape, -1)
        self.prop_index = np.full(shape, -1)
        residual = {r.output: r for r in problem.residual}
        sigma_lookup = {key: k for k, key in enumerate(space.sigma_output)}
        for i, s in enumerate(subjects):
            n = s.n_obs
            self.mask[i, :n] = True
            self.censored[i, :n] = s.blq
            for j in range(n):
                r = residual[int(s.output[j])]
                log = r.model == "log-additive"
                value = s.lloq[j] if s.blq[j] else s.dv[j]
                self.y[i, j] = math.log(value) if log else value
                self.is_log[i, j] = log
                self.add_index[i, j] = sigma_lookup.get((r.output, "add"), -1)
                self.prop_index[i, j] = sigma_lookup.get((r.output, "prop"), -1)
        self.n_censored = int(self.censored.sum())
        self.n_observed = int(self.mask.sum()) - self.n_censored
        if self.n_observed + self.n_censored == 0:
            raise EstimationError("the problem has no observations; nothing to fit")

    def residual_sds(self, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-observation additive and proportional SDs: σ (..., n_sigma) → each (..., n_subjects, nmax)
        (0 where the model has no such component)."""
        sigma = np.asarray(sigma, dtype=float)
        ext = np.concatenate([sigma, np.zeros((*sigma.shape[:-1], 1))], axis=-1)
        return ext[..., self.add_index], ext[..., self.prop_index]
