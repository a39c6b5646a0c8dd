"""Reasons a customer can be told: which invoice factors raised an enterprise's default probability.

Method: integrated gradients (captum ``IntegratedGradients``, Gauss-Legendre, 32 steps: no
sampling, so the same inputs give the same reasons) of the *served* default probability of
each scoring member (rating-aware net + rating stack, :meth:`models.crossfit.DefaultMember.rated`)
with respect to the member's cleaned invoice features. The rating vector is held at the
enterprise's own value: reasons explain the invoice factors, given the rating.

Reference: the *median enterprise* of the training data (every raw feature at its training
median, then cleaned; ``Preprocessor.fill``). Attributions are in probability units and, per
member, add up to ``p(enterprise) - p(median enterprise with the same rating)``
(completeness); they are averaged over members with the same weights as the probability.

A reason is a factor with a positive attribution (it pushed the probability up), largest
first, phrased with the enterprise's own raw value by :func:`describe`, e.g.
``sales_growth: sales fell 43% in the last 12 months``.

Examples
--------
>>> describe("sales_growth", -0.434)
'sales_growth: sales fell 43% in the last 12 months'
>>> describe("void_rate_out", 0.18)
'void_rate_out: 18% of sales invoices voided'
>>> describe("months_since_last", 7.0)
'months_since_last: last invoice 7 months before the scoring date'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

#: How many reasons each score and credit line carries.
N_REASONS = 3
#: Integration steps (fixed: the attribution is deterministic).
IG_STEPS = 32
#: Attributions below this (probability units) are not reasons.
MIN_ATTRIBUTION = 1e-4


def _pct(v: float) -> str:
    return f"{abs(v) * 100:.0f}%"


def _yuan(v: float) -> str:
    return f"{v / 1e4:,.1f} ten-thousand yuan"


def _growth(what: str) -> Callable[[float], str]:
    return lambda v: f"{what} {'fell' if v < 0 else 'rose'} {_pct(v)} in the last 12 months"


def _avg_growth(what: str) -> Callable[[float], str]:
    return lambda v: f"{what} {'fell' if v < 0 else 'rose'} {_pct(v)} a year on average over the last 2 years"


_PHRASES: dict[str, Callable[[float], str]] = {
    "sales_y0": lambda v: f"sales of {_yuan(v)} in the last 12 months",
    "cost_y0": lambda v: f"purchases of {_yuan(v)} in the last 12 months",
    "profit_y0": lambda v: f"{'a loss' if v < 0 else 'a margin'} of {_yuan(abs(v))} (sales minus purchases) in the last 12 months",
    "margin_y0": lambda v: f"sales minus purchases is {v * 100:.0f}% of sales in the last 12 months",
    "sales_growth": _growth("sales"),
    "cost_growth": _growth("purchases"),
    "profit_growth": _growth("sales minus purchases"),
    "income_growth": _growth("invoiced income"),
    "avg_sales_growth": _avg_growth("sales"),
    "avg_cost_growth": _avg_growth("purchases"),
    "avg_profit_growth": _avg_growth("sales minus purchases"),
    "n_valid": lambda v: f"{v:.0f} valid invoices",
    "n_void": lambda v: f"{v:.0f} voided invoices",
    "n_return": lambda v: f"{v:.0f} returns (negative invoices)",
    "void_rate": lambda v: f"{_pct(v)} of invoices voided",
    "return_rate": lambda v: f"{_pct(v)} of valid invoices are returns",
    "n_valid_out": lambda v: f"{v:.0f} valid sales invoices",
    "n_void_out": lambda v: f"{v:.0f} voided sales invoices",
    "n_return_out": lambda v: f"{v:.0f} sales returns",
    "void_rate_out": lambda v: f"{_pct(v)} of sales invoices voided",
    "return_rate_out": lambda v: f"{_pct(v)} of valid sales invoices are returns",
    "void_rate_in": lambda v: f"{_pct(v)} of purchase invoices voided",
    "return_rate_in": lambda v: f"{_pct(v)} of valid purchase invoices are returns",
    "return_amount_share_out": lambda v: f"returns are {_pct(v)} of gross sales",
    "n_invoices": lambda v: f"{v:.0f} invoices in all",
    "n_out": lambda v: f"{v:.0f} sales invoices",
    "n_in": lambda v: f"{v:.0f} purchase invoices",
    "log_sales_y0": lambda v: f"sales of {_yuan(math.copysign(math.expm1(abs(v)), v))} in the last 12 months",
    "log_cost_y0": lambda v: f"purchases of {_yuan(math.copysign(math.expm1(abs(v)), v))} in the last 12 months",
    "n_buyers": lambda v: f"{v:.0f} buyers",
    "n_sellers": lambda v: f"{v:.0f} suppliers",
    "top_buyer_share": lambda v: f"the largest buyer takes {_pct(v)} of sales",
    "top_seller_share": lambda v: f"the largest supplier provides {_pct(v)} of purchases",
    "sales_cv_12m": lambda v: f"monthly sales vary by {_pct(v)} of their mean over the last 12 months",
    "sales_cv_24m": lambda v: f"monthly sales vary by {_pct(v)} of their mean over the last 24 months",
    "active_months_share_12m": lambda v: f"invoices in only {v * 12:.0f} of the last 12 months",
    "months_since_first": lambda v: f"first invoice {v:.0f} months before the scoring date",
    "months_since_last": lambda v: f"last invoice {v:.0f} months before the scoring date",
}


def describe(feature: str, raw_value: float) -> str:
    """``feature: plain words with the enterprise's own value`` (``no data`` where the value is missing)."""
    if raw_value is None or not math.isfinite(raw_value):
        return f"{feature}: no data (counted as the median enterprise's value)"
    phrase = _PHRASES.get(feature)
    return f"{feature}: {phrase(float(raw_value)) if phrase else f'value {raw_value:.4g}'}"


def preload() -> None:
    """Import the attribution library now (a worker calls this before it says it is ready).

    captum pulls in matplotlib; imported lazily by the first rescoring, it held the GIL for ~2 s in
    the middle of the stream (py-spy on a 1.1 M-invoice replay).
    """
    import captum.attr  # noqa: F401


def integrated_gradients(forward: Callable[..., torch.Tensor], x: np.ndarray, reference: np.ndarray,
                         *fixed: torch.Tensor, n_steps: int = IG_STEPS,
                         with_delta: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Attributions (n, d) of ``forward(x, *fixed)`` ((n, d) -> (n,)) to ``x``, from ``reference`` (d,).

    ``fixed`` are per-row inputs held at their values along the path (captum repeats them per step).
    ``with_delta`` also returns each row's completeness gap (n,): the attributions' sum minus
    ``forward(x) - forward(reference)``, how far the ``n_steps`` quadrature is from exact.

    ``forward`` must treat rows independently (the default nets do, in eval mode). captum is given
    the batch's *sum* of outputs: its gradient with respect to each path point is that point's own
    gradient, so the attributions are bit for bit those of the per-row outputs, but autograd runs
    one backward pass instead of one per output (captum's ``compute_gradients`` unbinds a vector
    output into n x ``n_steps`` scalar roots; that bookkeeping was most of the cost of the reasons,
    ``scripts/bench_reasons.py``).

    Examples
    --------
    >>> f = lambda x: (x ** 2).sum(dim=1)
    >>> integrated_gradients(f, np.array([[1.0, 2.0]]), np.zeros(2)).round(6).tolist()
    [[1.0, 4.0]]
    >>> attr, delta = integrated_gradients(f, np.array([[1.0, 2.0]]), np.zeros(2), n_steps=4, with_delta=True)
    >>> abs(float(delta[0])) < 1e-9
    True
    """
    from captum.attr import IntegratedGradients

    def summed(path: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return forward(path, *args).sum().reshape(1)  # (n * n_steps, d) -> (1,)

    inputs = torch.as_tensor(np.asarray(x, dtype=np.float64))
    base = torch.as_tensor(np.broadcast_to(np.asarray(reference, dtype=np.float64), inputs.shape).copy())
    attr = IntegratedGradients(summed).attribute(inputs, baselines=base, additional_forward_args=fixed or None,
                                                 n_steps=n_steps, method="gausslegendre")
    out = np.asarray(attr.detach().numpy(), dtype=np.float64)
    if not with_delta:
        return out
    with torch.no_grad():
        change = np.asarray((forward(inputs, *fixed) - forward(base, *fixed)).double().numpy())  # (n,)
    return out, out.sum(axis=1) - change


def top_reasons(attribution: np.ndarray, columns: Sequence[str], raw: np.ndarray,
                n: int = N_REASONS) -> list[str]:
    """The ``n`` largest positive attributions of one enterprise, described with its raw values.

    Examples
    --------
    >>> top_reasons(np.array([0.02, -0.1, 0.05]), ("void_rate", "n_buyers", "sales_growth"),
    ...             np.array([0.3, 4.0, -0.5]), n=2)
    ['sales_growth: sales fell 50% in the last 12 months', 'void_rate: 30% of invoices voided']
    """
    order = np.argsort(-np.asarray(attribution), kind="stable")
    return [describe(columns[j], float(raw[j])) for j in order[:n] if attribution[j] > MIN_ATTRIBUTION]
