"""The one tolerance rule of the test suite (flash-attn's practice), for every test that compares two computations
of the same numbers in floating point (a fast path against its reference, the CLI against the harness, one rank
against two):

    max |actual - precise|  <=  c * max |reference - precise|  +  bound(dtype, op)

* ``precise``: the reference computed in a higher precision (float64; float32 for 16-bit dtypes), so
  ``|reference - precise|`` is the reference's own rounding error on these very inputs;
* ``c``: how much worse than the reference the other path may be (:data:`C` = 2, as flash-attn's tests);
* ``bound(dtype, op) = terms * u * scale``: the dtype's forward-error bound for the operation, used on its own where
  there is no higher-precision reference to measure (and as a floor where the reference happens to be exact):
  ``u`` the unit roundoff (``eps / 2``: 2**-24 for float32), ``terms`` the number of rounded operations an output
  element accumulates (``gamma_n ~ n u`` for a sum of ``n`` terms; 1 for a single rounding), ``scale`` the size of
  the terms (default ``max |precise|``); a value read back from a log printed with ``d`` decimals adds that
  printing's bound, ``0.5 * 10**-d``.

No comparison of rounded values: two orders of computation may round the same number to different decimals. An
exact op (a gather, a copy) is compared with ``torch.equal``, not with this rule.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

C = 2.0  # the other path may err at most twice as much as the reference does

ArrayLike = torch.Tensor | float | Sequence[float]


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps / 2``: the largest relative error of one correctly rounded operation in ``dtype``."""
    return torch.finfo(dtype).eps / 2


def higher(dtype: torch.dtype) -> torch.dtype:
    """The precision the reference is measured in: float64 for float32/float64, float32 for 16-bit dtypes."""
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def dtype_bound(dtype: torch.dtype, scale: float, terms: int = 1) -> float:
    """``terms * u(dtype) * scale``: the forward-error bound of ``terms`` rounded operations on values of size
    ``scale``."""
    return terms * unit_roundoff(dtype) * float(scale)


def _t(x: ArrayLike) -> torch.Tensor:
    return x.detach().to(torch.float64).cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)


def max_error(a: ArrayLike, b: ArrayLike) -> float:
    """``max |a - b|`` in float64 (0 for empty inputs)."""
    d = (_t(a) - _t(b)).abs()
    return float(d.max()) if d.numel() else 0.0


def allowed(reference: ArrayLike, precise: ArrayLike, dtype: torch.dtype = torch.float32, *, c: float = C,
            terms: int = 1, scale: float | None = None, decimals: int | None = None, printed: int = 1) -> float:
    """The rule's right-hand side: ``c * max |reference - precise| + terms * u(dtype) * scale``, plus
    ``printed * 0.5 * 10**-decimals`` when ``printed`` sides of the comparison were only stored with ``decimals``
    decimals (a CSV log): each printing is one more rounding, with its own bound."""
    p = _t(precise)
    scale = float(p.abs().max()) if scale is None and p.numel() else (scale or 0.0)
    printing = printed * 0.5 * 10.0**-decimals if decimals is not None else 0.0
    return c * max_error(reference, precise) + dtype_bound(dtype, scale, terms) + printing


def assert_within(actual: ArrayLike, reference: ArrayLike, precise: ArrayLike, dtype: torch.dtype | None = None, *,
                  c: float = C, terms: int = 1, scale: float | None = None, decimals: int | None = None,
                  printed: int = 1, name: str = "") -> None:
    """Assert the rule: ``actual`` errs against ``precise`` at most ``c`` times as much as ``reference`` does,
    plus the dtype's bound for ``terms`` rounded operations (module doc). ``dtype``: of ``actual`` when a tensor,
    else float32; ``decimals``, ``printed``: see :func:`allowed`."""
    if dtype is None:
        dtype = actual.dtype if isinstance(actual, torch.Tensor) and actual.is_floating_point() else torch.float32
    a, p = _t(actual), _t(precise)
    assert a.shape == p.shape, f"{name}: shape {tuple(a.shape)} != {tuple(p.shape)}"
    assert torch.isfinite(a).all(), f"{name}: non-finite values"
    err, ref_err = max_error(a, p), max_error(reference, p)
    bound = allowed(reference, p, dtype, c=c, terms=terms, scale=scale, decimals=decimals, printed=printed)
    assert err <= bound, (f"{name}: max |actual - precise| = {err:.3g} > {c} x reference's own error {ref_err:.3g} "
                          f"+ {terms} x u({dtype}) x scale = {bound:.3g}")


def assert_dtype_bound(actual: ArrayLike, precise: ArrayLike, dtype: torch.dtype | None = None, *, terms: int = 1,
                       scale: float | None = None, name: str = "") -> None:
    """The rule without a reference path: ``max |actual - precise| <= terms * u(dtype) * scale``."""
    assert_within(actual, precise, precise, dtype, c=0.0, terms=terms, scale=scale, name=name)


__all__ = ["C", "allowed", "assert_dtype_bound", "assert_within", "dtype_bound", "higher", "max_error",
           "unit_roundoff"]
