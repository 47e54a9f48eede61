"""Episode metrics over stacked tick events: each metric defined once, for NumPy and JAX.

Inputs are the per-tick fields of `jaxsim.types.TickEvents` as NumPy arrays with a leading
seed axis and a tick axis, shape ``(S, T, ...)`` — a dict (as returned by
`jaxsim.tools.simulate.simulate`) or a `TickEvents` of arrays. Every primitive works along the
last axis (ticks) and broadcasts over the leading ones, so it also accepts a single series.

`episode_metrics(events)` returns ``{name: array of shape (S,)}``; `summarize` reduces it
to mean / min / max over seeds (NaN-aware: a metric that is undefined for a seed, e.g. the
long fraction of liquidations when nothing was liquidated, is NaN and ignored).

Metric names (units):

- ``dd_spot``, ``dd_perp``, ``dd_ext``, ``dd_index``, ``dd_mark``: max drawdown, the largest
  peak-to-trough fall ``1 - x_t / max_{s<=t} x_s`` (fraction) of the spot last, perp last,
  external (mean of venues), index and mark price of BASE.
- ``ret_spot``, ``ret_perp``, ``ret_ext``: end / start - 1 of the same prices.
- ``low_spot``, ``low_perp``: min / start of the price (fraction of its start).
- ``liq_long``, ``liq_short``, ``liq_total`` (USDT): liquidated notional, summed over ticks;
  ``liq_long_frac`` = long / total (NaN without liquidations); ``liq_accounts``: accounts
  liquidated, summed over ticks and cascade rounds (an account liquidated in two ticks counts
  twice); ``liq_peak_tick`` (USDT): the largest one-tick liquidation; ``liq_peak_1h`` (USDT):
  the largest liquidation within any 1-hour window. ``liq_backlog_max``: the most accounts
  left queued for liquidation (under maintenance, or queued by a rule change) when a
  tick's liquidation rounds ended. Present when the events have ``liq_backlog``.
- ``stable_low``: min internal STABLE/USDT last price; ``stable_index_low``: min STABLE
  index; ``stable_ext_low``: min external STABLE price.
- ``lst_index_rel_low``: min of the LST index relative to its redemption value
  ``lst_rate * BASE index``; when `lst_rate` is not given, the redemption value is taken as
  the ratio LST index / BASE index at the first tick (equal to ``lst_rate`` when the episode
  starts at parity, as every scenario does). ``lst_px_rel_low``: the same for the internal
  LST/USDT last price.
- ``if_initial``, ``if_final`` (USDT): the insurance fund before the first tick and after the
  last; ``if_draw`` (USDT): initial - minimum fund (>= 0, the fund's deepest loss);
  ``if_draw_frac``: if_draw / initial; ``if_draw_total`` (USDT): the sum of the positive
  per-tick draws (a tick's draw is net of the fees paid in that tick); ``if_equity_low``
  (USDT): the lowest marked equity of the fund (USDT + position at mark + collateral at
  index; present when the events have ``insurance_equity``); ``bad_debt`` (USDT): deficit
  the fund could not back, written off, summed.
- ``adl_count``: counterparty positions hit by ADL, summed; ``adl_notional`` (USDT).
- ``basis_max_abs``, ``basis_min``, ``basis_max``: of (perp mid - spot mid) / spot mid;
  ``mark_gap_max_abs``: max |mark - index| / index.
- ``funding_mean``, ``funding_min``, ``funding_max``: of the predicted funding rate per
  funding interval (8 h by default).
- ``oi_start``, ``oi_end``, ``oi_peak`` (BASE), ``oi_change`` = end / start - 1,
  ``oi_from_peak`` = end / peak - 1 (open interest = (long + short) / 2).
- ``forced_reduce`` (USDT): notional cut by rule enforcement; ``collateral_sold_usdt``
  (USDT): proceeds of the engine's collateral sales; ``collateral_sold_stable``,
  ``collateral_sold_lst`` (units); ``fees`` (USDT); ``rules_changed``: schedule rows applied.
- ``edge_spot``, ``edge_perp``, ``edge_stable``, ``edge_lst``: fraction of ticks in which
  the book traded and its last trade is on its price grid's lowest or highest level, where
  an order could not trade further (the grid follows the maker's quote centre, see
  `engine._recentre`, so a price far from that centre can be held at the grid's edge).
  Present when the events have ``grid_edge``.
- ``venue_impact_low``, ``venue_impact_end``: the venues' BASE price move caused by the
  flow traded on this exchange (``exogenous.venue_impact_bps_per_musdt``), as a fraction:
  its lowest and its last value (0 when the venues ignore this exchange). Present when the
  events have ``venue_impact``.
- Stylized facts of the log returns of the spot last price (or `facts_price`, e.g. the
  spot mid): ``kurt_1tick`` excess kurtosis at the tick frequency, ``kurt_agg`` at `agg_s`
  seconds (returns summed over blocks), ``acf_ret_1``..``acf_ret_5`` autocorrelation of
  returns, ``acf_absret_1``..``acf_absret_10`` autocorrelation of |returns|,
  ``acf_absret_mean`` their mean, and ``frac_zero_ret`` the fraction of ticks where the
  price did not move. NaN when the price never moved.

One definition per metric: `EPISODE_METRICS` lists, for every metric but the stylized facts,
the per-tick quantities it reduces over the ticks and its formula, written against an array
namespace. `episode_metrics` evaluates them in NumPy (float64, whole series);
`jaxsim.tools.sweep` evaluates the same definitions in JAX inside its scan, one tick at a
time, in the events' own float dtype.

Helpers for causality checks: `first_crossing` (first tick a series falls below / rises
above a level, relative to its start or absolute) and `lead_lag` (difference of two first
crossings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

__all__ = [
    "EPISODE_METRICS",
    "LIQ_WINDOW_S",
    "Metric",
    "as_dict",
    "autocorr",
    "episode_metrics",
    "excess_kurtosis",
    "facts_series",
    "first_crossing",
    "lead_lag",
    "log_returns",
    "max_drawdown",
    "rolling_max_sum",
    "summarize",
]

N_ACF_RET = 5
N_ACF_ABS = 10


def as_dict(events) -> dict[str, np.ndarray]:
    """A dict of NumPy arrays from a dict or a (flax) dataclass of arrays."""
    if isinstance(events, Mapping):
        return {k: np.asarray(v) for k, v in events.items()}
    if dataclasses.is_dataclass(events):
        return {f.name: np.asarray(getattr(events, f.name)) for f in dataclasses.fields(events)}
    raise TypeError(f"expected a mapping or a dataclass of arrays, got {type(events).__name__}")


# ------------------------------------------------------------------ primitives


def max_drawdown(x) -> np.ndarray:
    """Largest peak-to-trough fall along the last axis, as a fraction of the peak.

    ``max_drawdown([100, 120, 90, 110]) == 0.25``. Non-positive peaks give NaN.
    """
    x = np.asarray(x, np.float64)
    peak = np.maximum.accumulate(x, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(peak > 0, 1.0 - x / peak, np.nan)
    return np.max(dd, axis=-1)


def log_returns(x) -> np.ndarray:
    """log(x_t / x_{t-1}) along the last axis (length T - 1); non-positive prices give NaN."""
    x = np.asarray(x, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lx = np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), np.nan)
    return np.diff(lx, axis=-1)


def aggregate(r, k: int) -> np.ndarray:
    """Sum consecutive blocks of `k` values along the last axis (incomplete tail dropped)."""
    r = np.asarray(r, np.float64)
    k = max(int(k), 1)
    n = r.shape[-1] // k
    return r[..., : n * k].reshape(*r.shape[:-1], n, k).sum(-1)


def excess_kurtosis(r) -> np.ndarray:
    """Excess kurtosis m4 / m2^2 - 3 along the last axis (moment estimator, NaN if constant).

    ``excess_kurtosis([-1, -1, 1, 1]) == -2``; a Gaussian sample gives about 0.
    """
    r = np.asarray(r, np.float64)
    if r.shape[-1] == 0:
        return np.full(r.shape[:-1], np.nan)
    d = r - r.mean(-1, keepdims=True)
    m2 = (d**2).mean(-1)
    m4 = (d**4).mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m2 > 0, m4 / np.where(m2 > 0, m2, 1.0) ** 2 - 3.0, np.nan)


def autocorr(r, lags) -> np.ndarray:
    """Sample autocorrelation along the last axis at each lag; shape (..., len(lags)).

    rho_k = sum_t (r_t - m)(r_{t+k} - m) / sum_t (r_t - m)^2 (NaN when r is constant).
    """
    r = np.asarray(r, np.float64)
    lags = [int(k) for k in lags]
    if r.shape[-1] == 0:
        return np.full(r.shape[:-1] + (len(lags),), np.nan)
    d = r - r.mean(-1, keepdims=True)
    den = (d**2).sum(-1)
    out = []
    for k in lags:
        num = (d[..., :-k] * d[..., k:]).sum(-1) if 0 < k < r.shape[-1] else np.nan * den
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))
    return np.stack(out, -1)


def rolling_max_sum(x, window: int) -> np.ndarray:
    """Largest sum of `window` consecutive values along the last axis."""
    x = np.asarray(x, np.float64)
    w = int(min(max(window, 1), x.shape[-1]))
    c = np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(x, -1)], -1)
    return np.max(c[..., w:] - c[..., :-w], axis=-1)


def first_crossing(series, threshold: float, *, relative: bool = True, below: bool = True):
    """Index of the first tick (last axis) at which `series` crosses a level; -1 if never.

    relative=True: the level is ``threshold * series[..., 0]`` (e.g. 0.95 = a 5% fall from
    the start); relative=False: the level is `threshold` itself. below=True looks for
    ``series < level``, below=False for ``series > level``. Works batched over leading axes.

    Example: ``first_crossing(np.cumsum(ev["collateral_sold_usdt"], -1), 0, relative=False,
    below=False)`` is the first tick at which the engine sold collateral.
    """
    x = np.asarray(series, np.float64)
    level = threshold * x[..., :1] if relative else threshold
    hit = x < level if below else x > level
    return np.where(hit.any(-1), hit.argmax(-1), -1)


def lead_lag(x, y, threshold: float, *, relative: bool = True, below: bool = True, y_kw=None):
    """Ticks by which `x` crosses its level before `y` does: crossing(y) - crossing(x).

    Positive: x moved first. The same `threshold` / `relative` / `below` apply to both
    unless `y_kw` (a dict with any of those keys) overrides them for `y`. A series that
    never crosses counts as crossing after the end (tick T), so "x crossed, y never" is
    positive and "neither crossed" is 0.
    """
    kw = dict(threshold=threshold, relative=relative, below=below)
    ky = {**kw, **(y_kw or {})}
    n = np.asarray(x).shape[-1]
    cx = first_crossing(x, **kw)
    cy = first_crossing(y, **ky)
    cx = np.where(cx < 0, n, cx)
    cy = np.where(cy < 0, n, cy)
    return cy - cx


# ------------------------------------------------------------------ episode metrics
#
# Every metric that reduces tick by tick is defined once, in `EPISODE_METRICS`: the
# reductions it needs ("op:quantity", a per-tick quantity of `QUANTITIES` reduced over the
# ticks by an op of `REDUCE_OPS`) and a formula over them. Quantities and formulas are
# written against an array namespace `xp` (numpy or jax.numpy). `episode_metrics` evaluates
# them in NumPy float64 on whole series; `jaxsim.tools.sweep` evaluates the same
# definitions in JAX one tick at a time inside its scan.

LIQ_WINDOW_S = 3600.0  # window of liq_peak_1h


def _ratio(a, b, xp=np):
    """a / b, NaN where b == 0."""
    if xp is np:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)
    return xp.where(b != 0, a / xp.where(b != 0, b, 1.0), xp.nan)


# Per-tick quantities: q(g, xp, rate) with g(field) the event field as a float array
# (ticks on the last axis of whole series, or one tick) and rate the LST redemption rate.
def _field(name: str, i: int | None = None) -> Callable:
    return lambda g, xp, rate: g(name) if i is None else g(name)[..., i]


def _lst_rel(name: str) -> Callable:
    return lambda g, xp, rate: _ratio(_ratio(g(name)[..., 1], g("index_px")[..., 0], xp), rate, xp)


QUANTITIES: dict[str, Callable] = {
    **{q: _field(f"{q}_px") for q in ("spot", "perp", "mark")},
    "ext": _field("ext_px", 0),
    "index": _field("index_px", 0),
    "liq_long": _field("liq_notional_long"),
    "liq_short": _field("liq_notional_short"),
    "liq": lambda g, xp, rate: g("liq_notional_long") + g("liq_notional_short"),
    "stable_px": _field("collateral_px", 0),
    "stable_index": _field("collateral_index", 0),
    "stable_ext": _field("ext_px", 1),
    "lst_index_rel": _lst_rel("collateral_index"),
    "lst_px_rel": _lst_rel("collateral_px"),
    "fund": _field("insurance_fund"),
    "fund_equity": _field("insurance_equity"),
    "fund_before": lambda g, xp, rate: g("insurance_fund") + g("insurance_draw"),
    "draw_pos": lambda g, xp, rate: xp.maximum(g("insurance_draw"), 0.0),
    "abs_basis": lambda g, xp, rate: xp.abs(g("basis")),
    "abs_mark_gap": lambda g, xp, rate: xp.abs(g("mark_index_gap")),
    "funding": _field("funding_rate"),
    "oi": lambda g, xp, rate: 0.5 * (g("oi_long") + g("oi_short")),
    "forced_reduce": _field("forced_reduce_notional"),
    "sold_stable": _field("collateral_sold", 2),
    "sold_lst": _field("collateral_sold", 3),
    **{
        f"edge_{k}": _field("grid_edge", i) for i, k in enumerate(("spot", "perp", "stable", "lst"))
    },
    **{
        q: _field(q)
        for q in (
            "liq_accounts",
            "liq_backlog",
            "bad_debt",
            "adl_count",
            "adl_notional",
            "basis",
            "collateral_sold_usdt",
            "fees",
            "rules_changed",
            "venue_impact",
        )
    },
}

# Reductions over the tick axis of whole series (NumPy): op(x, window) -> x without it.
REDUCE_OPS: dict[str, Callable] = {
    "sum": lambda x, w: x.sum(-1),
    "mean": lambda x, w: x.mean(-1),
    "min": lambda x, w: x.min(-1),
    "max": lambda x, w: x.max(-1),
    "first": lambda x, w: x[..., 0],
    "last": lambda x, w: x[..., -1],
    "drawdown": lambda x, w: max_drawdown(x),
    "window_sum_max": lambda x, w: rolling_max_sum(x, w),
}


@dataclasses.dataclass(frozen=True)
class Metric:
    """One episode metric: ``formula(xp, *values of needs)``; `needs` are "op:quantity".

    `field`: an event field the metric needs beyond the always present ones (the metric
    is left out when the events lack it).
    """

    name: str
    needs: tuple[str, ...]
    formula: Callable | None = None  # None: the single reduction itself
    field: str | None = None

    def value(self, reduced: Mapping, xp=np):
        vals = [reduced[k] for k in self.needs]
        return vals[0] if self.formula is None else self.formula(xp, *vals)


def _ret(xp, last, first):
    return _ratio(last, first, xp) - 1.0


def _if_draw(xp, init, low):
    return init - xp.minimum(low, init)


def _m(name: str, *needs: str, formula: Callable | None = None, field: str | None = None):
    return Metric(name, needs, formula, field)


EPISODE_METRICS: tuple[Metric, ...] = (
    *(_m(f"dd_{q}", f"drawdown:{q}") for q in ("spot", "perp", "ext", "index", "mark")),
    *(_m(f"ret_{q}", f"last:{q}", f"first:{q}", formula=_ret) for q in ("spot", "perp", "ext")),
    _m("low_spot", "min:spot", "first:spot", formula=lambda xp, lo, s: _ratio(lo, s, xp)),
    _m("low_perp", "min:perp", "first:perp", formula=lambda xp, lo, s: _ratio(lo, s, xp)),
    _m("liq_long", "sum:liq_long"),
    _m("liq_short", "sum:liq_short"),
    _m("liq_total", "sum:liq_long", "sum:liq_short", formula=lambda xp, a, b: a + b),
    _m(
        "liq_long_frac",
        "sum:liq_long",
        "sum:liq_short",
        formula=lambda xp, a, b: _ratio(a, a + b, xp),
    ),
    _m("liq_accounts", "sum:liq_accounts"),
    _m("liq_peak_tick", "max:liq"),
    _m("liq_peak_1h", "window_sum_max:liq"),
    _m("liq_backlog_max", "max:liq_backlog", field="liq_backlog"),
    _m("stable_low", "min:stable_px"),
    _m("stable_index_low", "min:stable_index"),
    _m("stable_ext_low", "min:stable_ext"),
    _m("lst_index_rel_low", "min:lst_index_rel"),
    _m("lst_px_rel_low", "min:lst_px_rel"),
    _m("if_initial", "first:fund_before"),
    _m("if_final", "last:fund"),
    _m("if_draw", "first:fund_before", "min:fund", formula=_if_draw),
    _m(
        "if_draw_frac",
        "first:fund_before",
        "min:fund",
        formula=lambda xp, init, low: _ratio(_if_draw(xp, init, low), init, xp),
    ),
    _m("if_draw_total", "sum:draw_pos"),
    _m("if_equity_low", "min:fund_equity", field="insurance_equity"),
    _m("bad_debt", "sum:bad_debt"),
    _m("adl_count", "sum:adl_count"),
    _m("adl_notional", "sum:adl_notional"),
    _m("basis_max_abs", "max:abs_basis"),
    _m("basis_min", "min:basis"),
    _m("basis_max", "max:basis"),
    _m("mark_gap_max_abs", "max:abs_mark_gap"),
    _m("funding_mean", "mean:funding"),
    _m("funding_min", "min:funding"),
    _m("funding_max", "max:funding"),
    _m("oi_start", "first:oi"),
    _m("oi_end", "last:oi"),
    _m("oi_peak", "max:oi"),
    _m("oi_change", "last:oi", "first:oi", formula=_ret),
    _m("oi_from_peak", "last:oi", "max:oi", formula=_ret),
    _m("forced_reduce", "sum:forced_reduce"),
    _m("collateral_sold_usdt", "sum:collateral_sold_usdt"),
    _m("collateral_sold_stable", "sum:sold_stable"),
    _m("collateral_sold_lst", "sum:sold_lst"),
    _m("fees", "sum:fees"),
    _m("rules_changed", "sum:rules_changed"),
    *(
        _m(f"edge_{k}", f"mean:edge_{k}", field="grid_edge")
        for k in ("spot", "perp", "stable", "lst")
    ),
    _m(
        "venue_impact_low",
        "min:venue_impact",
        formula=lambda xp, x: xp.expm1(x),
        field="venue_impact",
    ),
    _m(
        "venue_impact_end",
        "last:venue_impact",
        formula=lambda xp, x: xp.expm1(x),
        field="venue_impact",
    ),
)
METRICS_BY_NAME = {m.name: m for m in EPISODE_METRICS}


def _dt(ev) -> float:
    t = np.asarray(ev["time_s"], np.float64).reshape(-1, np.shape(ev["time_s"])[-1])
    if t.shape[-1] > 1:
        return float(t[0, 1] - t[0, 0])
    return float(t[0, 0]) or 1.0


def facts_series(ev: Mapping[str, np.ndarray], price: str = "spot_px") -> np.ndarray:
    """The price whose returns give the stylized facts: a scalar event field (``spot_px``,
    ``perp_px``, ``mark_px``) or ``spot_mid`` / ``perp_mid`` (best bid / ask midpoint, which
    moves even in ticks without a trade; falls back to the last price where a side is empty).
    """
    if price in ("spot_mid", "perp_mid"):
        m, last = (0, "spot_px") if price == "spot_mid" else (1, "perp_px")
        b = np.asarray(ev["best_bid"], np.float64)[..., m]
        a = np.asarray(ev["best_ask"], np.float64)[..., m]
        return np.where((b > 0) & (a > 0), 0.5 * (b + a), np.asarray(ev[last], np.float64))
    return np.asarray(ev[price], np.float64)


def _facts_metrics(ev, dt: float, agg_s: float, facts_price: str) -> dict[str, np.ndarray]:
    """The stylized facts of the returns (whole-series statistics, NumPy only)."""
    m = {}
    r = log_returns(facts_series(ev, facts_price))
    lead = np.shape(ev["spot_px"])[:-1]
    m["frac_zero_ret"] = (r == 0).mean(-1) if r.shape[-1] else np.full(lead, np.nan)
    m["kurt_1tick"] = excess_kurtosis(r)
    m["kurt_agg"] = excess_kurtosis(aggregate(r, max(1, round(agg_s / dt))))
    acf = autocorr(r, range(1, N_ACF_RET + 1))
    for k in range(N_ACF_RET):
        m[f"acf_ret_{k + 1}"] = acf[..., k]
    acf_abs = autocorr(np.abs(r), range(1, N_ACF_ABS + 1))
    for k in range(N_ACF_ABS):
        m[f"acf_absret_{k + 1}"] = acf_abs[..., k]
    m["acf_absret_mean"] = acf_abs.mean(-1)
    return m


def episode_metrics(
    events,
    *,
    dt: float | None = None,
    lst_rate: float | None = None,
    agg_s: float = 300.0,
    facts_price: str = "spot_px",
) -> dict[str, np.ndarray]:
    """Per-seed episode metrics (see the module docstring for names and units).

    events: dict / TickEvents of arrays shaped (S, T, ...) (or (T, ...) for one seed, in
    which case every metric is a 0-d array). dt: seconds per tick (default: from time_s).
    lst_rate: LST redemption rate in BASE (default: the LST/BASE index ratio at tick 0).
    agg_s: aggregation horizon of `kurt_agg`, seconds. facts_price: the price of the
    stylized facts (`facts_series`; default the spot last price).
    """
    ev = as_dict(events)
    dt = float(dt) if dt else _dt(ev)
    g = lambda k: np.asarray(ev[k], np.float64)
    if lst_rate:
        rate = np.asarray(lst_rate, np.float64)
    else:
        rate = _ratio(g("collateral_index")[..., 0:1, 1], g("index_px")[..., 0:1, 0])
    window = max(1, round(LIQ_WINDOW_S / dt))
    series: dict[str, np.ndarray] = {}
    reduced: dict[str, np.ndarray] = {}
    m: dict[str, np.ndarray] = {}
    for metric in EPISODE_METRICS:
        if metric.field is not None and metric.field not in ev:
            continue
        for need in metric.needs:
            if need not in reduced:
                op, q = need.split(":")
                if q not in series:
                    series[q] = QUANTITIES[q](g, np, rate)
                reduced[need] = REDUCE_OPS[op](series[q], window)
        m[metric.name] = metric.value(reduced)
    m.update(_facts_metrics(ev, dt, agg_s, facts_price))
    return m


def summarize(metrics: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{name: {"mean", "min", "max", "n"}} over seeds, ignoring NaN (n = finite seeds)."""
    out = {}
    for k, v in metrics.items():
        v = np.asarray(v, np.float64).ravel()
        ok = v[np.isfinite(v)]
        if ok.size:
            out[k] = dict(mean=float(ok.mean()), min=float(ok.min()), max=float(ok.max()))
        else:
            out[k] = dict(mean=np.nan, min=np.nan, max=np.nan)
        out[k]["n"] = int(ok.size)
    return out
