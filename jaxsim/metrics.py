"""Episode metrics over stacked tick events (pure NumPy).

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
  the largest liquidation within any 1-hour window.
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
  per-tick draws (a tick's draw is net of the fees paid in that tick); ``bad_debt`` (USDT):
  deficit left after the fund ran dry, summed.
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

Helpers for causality checks: `first_crossing` (first tick a series falls below / rises
above a level, relative to its start or absolute) and `lead_lag` (difference of two first
crossings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

__all__ = [
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


def _dt(ev) -> float:
    t = np.asarray(ev["time_s"], np.float64).reshape(-1, np.shape(ev["time_s"])[-1])
    if t.shape[-1] > 1:
        return float(t[0, 1] - t[0, 0])
    return float(t[0, 0]) or 1.0


def _ratio(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


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
    m: dict[str, np.ndarray] = {}
    f64 = lambda k: np.asarray(ev[k], np.float64)

    spot, perp, mark = f64("spot_px"), f64("perp_px"), f64("mark_px")
    ext, index = f64("ext_px")[..., 0], f64("index_px")[..., 0]
    for name, x in (("spot", spot), ("perp", perp), ("ext", ext), ("index", index)):
        m[f"dd_{name}"] = max_drawdown(x)
    m["dd_mark"] = max_drawdown(mark)
    for name, x in (("spot", spot), ("perp", perp), ("ext", ext)):
        m[f"ret_{name}"] = _ratio(x[..., -1], x[..., 0]) - 1.0
    m["low_spot"] = _ratio(spot.min(-1), spot[..., 0])
    m["low_perp"] = _ratio(perp.min(-1), perp[..., 0])

    ll, ls = f64("liq_notional_long"), f64("liq_notional_short")
    m["liq_long"] = ll.sum(-1)
    m["liq_short"] = ls.sum(-1)
    m["liq_total"] = m["liq_long"] + m["liq_short"]
    m["liq_long_frac"] = _ratio(m["liq_long"], m["liq_total"])
    m["liq_accounts"] = f64("liq_accounts").sum(-1)
    m["liq_peak_tick"] = (ll + ls).max(-1)
    m["liq_peak_1h"] = rolling_max_sum(ll + ls, max(1, round(3600.0 / dt)))

    cpx, cidx = f64("collateral_px"), f64("collateral_index")
    m["stable_low"] = cpx[..., 0].min(-1)
    m["stable_index_low"] = cidx[..., 0].min(-1)
    m["stable_ext_low"] = f64("ext_px")[..., 1].min(-1)
    rate = (
        np.asarray(lst_rate, np.float64) if lst_rate else _ratio(cidx[..., 0:1, 1], index[..., 0:1])
    )
    m["lst_index_rel_low"] = _ratio(_ratio(cidx[..., 1], index), rate).min(-1)
    m["lst_px_rel_low"] = _ratio(_ratio(cpx[..., 1], index), rate).min(-1)

    fund, draw = f64("insurance_fund"), f64("insurance_draw")
    init = fund[..., 0] + draw[..., 0]
    m["if_initial"] = init
    m["if_final"] = fund[..., -1]
    m["if_draw"] = init - np.minimum(fund.min(-1), init)
    m["if_draw_frac"] = _ratio(m["if_draw"], init)
    m["if_draw_total"] = np.maximum(draw, 0.0).sum(-1)
    m["bad_debt"] = f64("bad_debt").sum(-1)
    m["adl_count"] = f64("adl_count").sum(-1)
    m["adl_notional"] = f64("adl_notional").sum(-1)

    basis = f64("basis")
    m["basis_max_abs"] = np.abs(basis).max(-1)
    m["basis_min"] = basis.min(-1)
    m["basis_max"] = basis.max(-1)
    m["mark_gap_max_abs"] = np.abs(f64("mark_index_gap")).max(-1)
    fr = f64("funding_rate")
    m["funding_mean"] = fr.mean(-1)
    m["funding_min"] = fr.min(-1)
    m["funding_max"] = fr.max(-1)

    oi = 0.5 * (f64("oi_long") + f64("oi_short"))
    m["oi_start"] = oi[..., 0]
    m["oi_end"] = oi[..., -1]
    m["oi_peak"] = oi.max(-1)
    m["oi_change"] = _ratio(m["oi_end"], m["oi_start"]) - 1.0
    m["oi_from_peak"] = _ratio(m["oi_end"], m["oi_peak"]) - 1.0

    m["forced_reduce"] = f64("forced_reduce_notional").sum(-1)
    m["collateral_sold_usdt"] = f64("collateral_sold_usdt").sum(-1)
    sold = f64("collateral_sold")
    m["collateral_sold_stable"] = sold[..., 2].sum(-1)
    m["collateral_sold_lst"] = sold[..., 3].sum(-1)
    m["fees"] = f64("fees").sum(-1)
    m["rules_changed"] = f64("rules_changed").sum(-1)
    if "grid_edge" in ev:  # (S, T, M): the last trade on its grid's outermost level
        edge = f64("grid_edge")
        for k, name in enumerate(("spot", "perp", "stable", "lst")):
            m[f"edge_{name}"] = edge[..., k].mean(-1)

    if "venue_impact" in ev:  # (S, T): log offset of the venues' BASE from the flow here
        imp = f64("venue_impact")
        m["venue_impact_low"] = np.expm1(imp.min(-1))
        m["venue_impact_end"] = np.expm1(imp[..., -1])

    r = log_returns(facts_series(ev, facts_price))
    m["frac_zero_ret"] = (r == 0).mean(-1) if r.shape[-1] else np.full(spot.shape[:-1], np.nan)
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
