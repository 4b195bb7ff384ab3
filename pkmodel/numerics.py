"""Numerical functions generated from a model's symbols.

Everything here is derived, never hand-written: sympy expressions of the right-hand side, Jacobian,
outputs, initial conditions, and (for linear models) the rate matrix K and input vector b are turned
into numpy functions by :func:`sympy.lambdify` with common-subexpression elimination.  All functions
broadcast over subjects: pass arrays of shape ``(n_subjects,)`` for the amounts and arguments.

Array conventions: amounts ``x`` have shape ``(n_states, *batch)``, arguments ``p`` (parameters,
covariates and inputs, in :attr:`pkmodel.Model.argument_names` order) ``(n_args, *batch)``; results
put the quantity axis first.  :meth:`CompiledModel.rate_matrix` returns subjects first,
``(n_subjects, n, n)``, ready for batched matrix exponentials.
"""

from __future__ import annotations

from functools import reduce

import numpy as np
import sympy

from .expressions import TIME_SYMBOL

__all__ = ["CompiledModel"]

_PKMIN = sympy.Function("_pkmin")
_PKMAX = sympy.Function("_pkmax")
_MODULES = [{"_pkmin": lambda *a: reduce(np.minimum, a), "_pkmax": lambda *a: reduce(np.maximum, a)}, "numpy"]


def _prepare(expr: sympy.Expr) -> sympy.Expr:
    return expr.replace(sympy.Min, _PKMIN).replace(sympy.Max, _PKMAX)


class _VectorFunction:
    """``f(*args) -> ndarray (len(exprs), *broadcast shape)`` from a list of sympy expressions."""

    def __init__(self, args: list[sympy.Symbol], exprs: list[sympy.Expr]):
        self.size = len(exprs)
        self.constant = [i for i, e in enumerate(exprs) if not e.free_symbols]
        self.values = np.array([float(exprs[i]) for i in self.constant]) if self.constant else np.zeros(0)
        self.varying = [i for i, e in enumerate(exprs) if e.free_symbols]
        if self.varying:
            self._f = sympy.lambdify(
                args, [_prepare(exprs[i]) for i in self.varying], modules=_MODULES, cse=True
            )
        else:
            self._f = None

    def __call__(self, *args, batch: tuple[int, ...] = ()) -> np.ndarray:
        shape = np.broadcast_shapes(batch, *(np.shape(a) for a in args))
        out = np.empty((self.size, *shape))
        if self.constant:
            out[self.constant] = self.values.reshape((-1,) + (1,) * len(shape))
        if self._f is not None:
            vals = self._f(*args)
            for i, v in zip(self.varying, vals, strict=True):
                out[i] = v
        return out


class CompiledModel:
    """The numerical functions of a :class:`pkmodel.Model`.

    Parameters
    ----------
    model : Model
    """

    def __init__(self, model):
        self.model = model
        self.state_names = model.state_names
        self.argument_names = model.argument_names
        self.output_names = tuple(model.outputs)
        self.n_states = len(self.state_names)
        states = [model.symbols[s] for s in self.state_names]
        arguments = [model.symbols[a] for a in self.argument_names]
        self._args = [TIME_SYMBOL, *states, *arguments]
        self._rhs = _VectorFunction(self._args, [model.rhs_exprs[s] for s in self.state_names])
        jac = model.jacobian()
        self._jac_index = [
            (i, j) for i in range(self.n_states) for j in range(self.n_states) if jac[i, j] != 0
        ]
        self._jac = _VectorFunction(self._args, [jac[i, j] for i, j in self._jac_index])
        self._outputs = _VectorFunction(self._args, [model.output_exprs[o] for o in self.output_names])
        self._selected: dict[tuple[str, ...], _VectorFunction] = {}
        self._initial = _VectorFunction(arguments, [model.initial_exprs[s] for s in self.state_names])
        self.is_linear = model.is_linear
        if self.is_linear:
            K, b = model.linear_system()
            self._k_index = [
                (i, j) for i in range(self.n_states) for j in range(self.n_states) if K[i, j] != 0
            ]
            self._k = _VectorFunction(arguments, [K[i, j] for i, j in self._k_index])
            self._b = _VectorFunction(arguments, list(b))

    # -- evaluation ---------------------------------------------------------------------------------
    def rhs(self, t, x, p) -> np.ndarray:
        """dA/dt, shape ``(n_states, *batch)``."""
        return self._rhs(t, *x, *p)

    def jacobian(self, t, x, p) -> np.ndarray:
        """∂(dA/dt)/∂A, shape ``(n_states, n_states, *batch)``."""
        vals = self._jac(t, *x, *p)
        out = np.zeros((self.n_states, self.n_states, *vals.shape[1:]))
        for k, (i, j) in enumerate(self._jac_index):
            out[i, j] = vals[k]
        return out

    def outputs(self, t, x, p, names: tuple[str, ...] | None = None) -> np.ndarray:
        """Outputs in their declared units, shape ``(n_outputs, *batch)``.

        ``names``: only these outputs, in this order (default all, in :attr:`output_names` order);
        each distinct selection is compiled once.
        """
        if names is None or tuple(names) == self.output_names:
            return self._outputs(t, *x, *p)
        names = tuple(names)
        func = self._selected.get(names)
        if func is None:
            unknown = [n for n in names if n not in self.model.output_exprs]
            if unknown:
                raise KeyError(unknown[0])
            func = self._selected[names] = _VectorFunction(
                self._args, [self.model.output_exprs[n] for n in names]
            )
        return func(t, *x, *p)

    def initial(self, p) -> np.ndarray:
        """Initial amounts, shape ``(n_states, *batch)``."""
        return self._initial(*p, batch=np.shape(p)[1:])

    def rate_matrix(self, p) -> np.ndarray:
        """K of dA/dt = K·A + b for a linear model, shape ``(*batch, n, n)``."""
        vals = self._k(*p, batch=np.shape(p)[1:])
        batch = vals.shape[1:]
        out = np.zeros((*batch, self.n_states, self.n_states))
        for k, (i, j) in enumerate(self._k_index):
            out[..., i, j] = vals[k]
        return out

    def input_vector(self, p) -> np.ndarray:
        """b of dA/dt = K·A + b for a linear model, shape ``(*batch, n)``."""
        return np.moveaxis(self._b(*p, batch=np.shape(p)[1:]), 0, -1)
