"""Slow plain-Python/NumPy reference of one exchange tick, for parity tests of `jaxsim.step`.

Written independently of `jaxsim/engine.py` and `jaxsim/book.py`, in the obvious slow way:

- each price level holds a FIFO queue, a Python list of ``[owner, size]`` entries (one entry
  per owner and level, as in the engine); adding to an owner's order moves the whole order to
  the back of the queue (the documented semantics of `jaxsim.book`), cancelling shrinks it in
  place, a taker eats the queue from the front;
- takers walk levels one by one, makers are settled one by one;
- the liquidation engine loops over accounts, the ADL queue is a sorted Python list.

Only NumPy and Python floats are used, with one exception: the exogenous price step draws its
two standard-normal vectors with `jax.random` from the same key the engine uses (the draws are
not what is being tested; the price formulas applied to them are). Call `step` with jax x64
enabled so the draws are float64 like the engine's.

Scope: everything `jaxsim.step` does for order kinds none / market / limit / cancel /
post-only, with an empty rule schedule and no transfers in flight (`RefExchange` raises
NotImplementedError on anything else rather than silently differing); accounts queued for
enforcement by a rule change (`SimState.enforce`) are therefore never present. The engine is
the spec for what docs/mechanics.md leaves open (phase order, LP replenishment, limit-price
rounding, fee charging, isolated margin moves, liquidation steps, ADL ranking, collateral
sales).
"""

from __future__ import annotations

import math

import numpy as np

# Constants restated from jaxsim.types (kept literal on purpose: a renumbering there should
# make the parity test fail loudly rather than be followed silently).
USDT, BASE, STABLE, LST = 0, 1, 2, 3
SPOT, PERP, STABLE_SPOT, LST_SPOT = 0, 1, 2, 3
N_MARKETS = 4
MARKET_ASSET = (BASE, BASE, STABLE, LST)
BID, ASK = 0, 1
KIND_NONE, KIND_MARKET, KIND_LIMIT, KIND_CANCEL = 0, 1, 2, 3
KIND_POST_ONLY = 9
N_KINDS = 10
OK, REJ_INVALID, REJ_BALANCE, REJ_MARGIN, REJ_POSITION_LIMIT, REJ_LEVERAGE = 0, 1, 2, 3, 4, 5
REJ_PRICE_BAND, REJ_OUT_OF_RANGE, REJ_NO_LIQUIDITY, REJ_SYSTEM = 6, 7, 8, 9
REJ_QUEUE_FULL, REJ_WOULD_TAKE = 10, 11
CROSS, ISOLATED = 0, 1
N_SYSTEM = 4
SECONDS_PER_8H = 8.0 * 3600.0
VOL_EWMA_S = 300.0
TINY = 1e-9
# The internal index leg is dropped once its book's last trade is older than this.
INTERNAL_STALE_S = 300.0
# Collateral sold for a negative USDT balance, in this order, each into its own spot book.
SALE_ORDER = ((STABLE, STABLE_SPOT), (LST, LST_SPOT), (BASE, SPOT))
MIN_SALE_USDT = 0.01  # the engine's collateral sales skip anything worth less at index


def _sign(x: float) -> float:
    return 1.0 if x > 0 else (-1.0 if x < 0 else 0.0)


def _np(tree):
    """Pytree leaf -> numpy (float64 / int / bool)."""
    return np.asarray(tree)


class RefExchange:
    """Reference exchange state + `step`. All fields are NumPy arrays or Python lists."""

    def __init__(self, params):
        d = params.dims
        self.n = d.n_accounts
        self.g = d.n_levels
        self.n_venues = d.n_venues
        self.basis_window = d.basis_window
        self.cascade_rounds = d.cascade_rounds
        self.liq_per_round = min(d.liq_per_round, d.n_accounts)
        self.lp, self.outside, self.ins, self.fees = d.lp, d.outside, d.insurance, d.fees
        self.n_user = self.n - N_SYSTEM
        self.n_makers = d.n_makers
        self.dt = float(params.dt)
        self.basis_window_s = float(params.basis_window_s)
        mk = params.markets
        self.tick = [float(x) for x in _np(mk.tick_size)]
        self.lp_depth = _np(mk.lp_depth).astype(float)
        self.lp_decay = _np(mk.lp_decay_bps).astype(float)
        self.lp_half = _np(mk.lp_half_spread_ticks).astype(float)
        self.lp_res = _np(mk.lp_resilience_per_s).astype(float)
        self.lp_refw = _np(mk.lp_ref_weight).astype(float)
        self.lp_withdraw = _np(mk.lp_vol_withdraw).astype(float)
        ex = params.exo
        self.price0 = _np(ex.price0).astype(float)
        self.sig = _np(ex.vol_per_sqrt_s).astype(float)
        self.vol_ref = _np(ex.vol_ref).astype(float)
        self.venue_disp = float(ex.venue_dispersion)
        self.stable_rev = float(ex.stable_reversion_per_s)
        self.lst_rate = float(ex.lst_rate)
        self.shocks = [
            (int(s0), int(n), int(asset), float(r))
            for s0, n, asset, r, on in zip(
                _np(ex.shock_start_tick),
                _np(ex.shock_ticks),
                _np(ex.shock_asset),
                _np(ex.shock_log_return),
                _np(ex.shock_active),
                strict=True,
            )
            if on
        ]
        if np.any(_np(params.schedule.active)):
            raise NotImplementedError("reference: rule schedules are not modelled")
        r = params.rules
        if float(_np(r.depth_limit_mult)) > 0:
            raise NotImplementedError("reference: depth-scaled position limits are not modelled")
        self.r = {k: _np(getattr(r, k)).astype(float) for k in r.__dataclass_fields__}
        ai = params.accounts
        self._init_acct = {k: _np(getattr(ai, k)).copy() for k in ai.__dataclass_fields__}
        self.events = {}
        self.n_stale = 0  # coverage statistics of the index (also for from_engine_state)
        self.n_clipped = 0

    # ------------------------------------------------------------------ rules helpers

    def tier_index(self, notional: float) -> int:
        floors = self.r["tier_floor"]
        k = -1
        for f in floors:
            if notional >= f:
                k += 1
        return min(max(k, 0), len(floors) - 1)

    def maint_margin(self, notional: float) -> float:
        floors, mmr = self.r["tier_floor"], self.r["tier_mmr"]
        cum = [0.0]
        for i in range(1, len(floors)):
            cum.append(cum[-1] + floors[i] * (mmr[i] - mmr[i - 1]))
        k = self.tier_index(notional)
        return notional * mmr[k] - cum[k]

    def max_lev(self, notional: float) -> float:
        return float(self.r["tier_max_lev"][self.tier_index(notional)])

    def maker_rate(self, a: int) -> float:
        """Account a's maker fee rate: its own (`accounts.users[].fees.maker`) if it has
        one, else the rule's."""
        ai = self._init_acct
        return float(ai["maker_fee"][a]) if ai["own_maker_fee"][a] else float(self.r["maker_fee"])

    def taker_rate(self, a: int) -> float:
        """Account a's taker fee rate: its own if it has one, else the rule's."""
        ai = self._init_acct
        return float(ai["taker_fee"][a]) if ai["own_taker_fee"][a] else float(self.r["taker_fee"])

    # ------------------------------------------------------------------ reset

    def reset(self):
        a = self._init_acct
        self.t = 0
        self.bal = a["bal"].astype(float).copy()
        self.debt = a["debt"].astype(float).copy()
        self.pos = a["pos"].astype(float).copy()
        self.entry = a["entry"].astype(float).copy()
        self.iso = a["iso_margin"].astype(float).copy()
        self.mode = a["mode"].astype(int).copy()
        self.lev = a["lev"].astype(float).copy()
        p0 = self.price0
        self.ext = np.tile(p0[:, None], (1, self.n_venues))
        self.ext_common = p0.copy()
        self.last = np.array([p0[0], p0[0], p0[1], p0[2]])
        self.last_trade_t = [0] * N_MARKETS  # the seeded prices count as trades at tick 0
        self.index = p0.copy()
        self.mark = float(p0[0])
        self.origin = [
            int(np.round(self.last[m] / self.tick[m])) - self.g // 2 for m in range(N_MARKETS)
        ]
        # book[m][side][level] = FIFO list of [owner, size]
        self.book = [[[[] for _ in range(self.g)] for _ in (BID, ASK)] for _ in range(N_MARKETS)]
        self.basis_samples: list[float] = []
        self.prem_wsum = 0.0
        self.prem_w = 0.0
        self.prem_n = 0
        interval = float(self.r["funding_interval_s"])
        self.funding_rate = float(self.r["funding_interest"]) * interval / SECONDS_PER_8H
        self.last_funding_rate = 0.0
        self.next_funding_s = interval
        self.vol = self.vol_ref.copy()
        self.n_deferred = 0
        self.n_bust = 0
        self.n_stale = 0
        self.n_clipped = 0
        self.n_banded = 0  # coverage statistic: collateral sales the sale band cut short
        self.bad_debt = 0.0  # written off so far (the engine's SimState.bad_debt)
        self.sale_ref = self.asset_px()  # the tick's opening index (set again each tick)
        self.n_kept = 0
        self.n_reordered = 0
        self.n_iso_deficit = 0
        self.n_interest = 0
        self.n_own_maker = 0  # coverage statistics: maker fills at an account's own rate,
        self.n_own_taker = 0  # and takes at its own taker rate (collateral sales too),
        self.n_own_rate_sales = 0  # collateral sales of a liquidation at the account's own rate
        self.reprice()
        self.liquidity(first_fill=True)
        return self

    @classmethod
    def from_engine_state(cls, params, state):
        """A reference whose state is a copy of an engine `SimState` (queues rebuilt by `ahead`)."""
        ref = cls(params)
        s = _np_tree(state)
        ref.t = int(s["t"])
        for k in ("bal", "debt", "pos", "entry", "lev"):
            setattr(ref, k, s["acct"][k].astype(float).copy())
        ref.iso = s["acct"]["iso_margin"].astype(float).copy()
        ref.mode = s["acct"]["mode"].astype(int).copy()
        px = s["px"]
        ref.ext, ref.ext_common = px["ext"].copy(), px["ext_common"].copy()
        ref.last, ref.index, ref.mark = px["last"].copy(), px["index"].copy(), float(px["mark"])
        ref.last_trade_t = [int(x) for x in px["last_trade_t"]]
        cnt = int(px["basis_count"])
        w = ref.basis_window
        ref.basis_samples = [float(px["basis_buf"][i % w]) for i in range(max(cnt - w, 0), cnt)]
        ref.prem_wsum, ref.prem_w = float(px["prem_wsum"]), float(px["prem_w"])
        ref.prem_n = int(px["prem_n"])
        ref.funding_rate = float(px["funding_rate"])
        ref.last_funding_rate = float(px["last_funding_rate"])
        ref.next_funding_s = float(px["next_funding_s"])
        ref.vol = px["vol"].copy()
        ref.bad_debt = float(s["bad_debt"])
        ref.n_deferred = ref.n_bust = ref.n_banded = ref.n_own_maker = ref.n_own_taker = 0
        ref.n_own_rate_sales = 0
        q, ah = s["book"]["qty"], s["book"]["ahead"]
        ref.origin = [int(x) for x in s["book"]["origin"]]
        ref.book = [[[[] for _ in range(ref.g)] for _ in (BID, ASK)] for _ in range(N_MARKETS)]
        for m in range(N_MARKETS):
            for sd in (BID, ASK):
                for j in range(ref.g):
                    owners = [o for o in range(ref.n) if q[m, sd, j, o] > 0]
                    owners.sort(key=lambda o: (ah[m, sd, j, o], o))
                    ref.book[m][sd][j] = [[o, float(q[m, sd, j, o])] for o in owners]
        return ref

    # ------------------------------------------------------------------ book helpers

    def level_px(self, m: int, j: int) -> float:
        return float(self.origin[m] + j) * self.tick[m]

    def level_tot(self, m: int, side: int, j: int) -> float:
        return sum(e[1] for e in self.book[m][side][j])

    def best(self, m: int) -> tuple[float, float]:
        bid, ask = 0.0, math.inf
        for j in range(self.g):
            p = self.level_px(m, j)
            if self.level_tot(m, BID, j) > 0:
                bid = max(bid, p)
            if self.level_tot(m, ASK, j) > 0:
                ask = min(ask, p)
        return bid, ask

    def owner_qty(self, m, side, j, owner) -> float:
        for e in self.book[m][side][j]:
            if e[0] == owner:
                return e[1]
        return 0.0

    def resting_accounts(self) -> set[int]:
        """Accounts with any resting order on any book."""
        return {
            e[0]
            for m in range(N_MARKETS)
            for sd in (BID, ASK)
            for lvl in self.book[m][sd]
            for e in lvl
            if e[1] > 0
        }

    def can_rest(self, a: int) -> bool:
        """The books hold the LP and at most n_makers - 1 other accounts at once."""
        others = self.resting_accounts() - {self.lp}
        return a in others or len(others) < self.n_makers - 1

    def book_add(self, m, side, j, owner, size):
        """Rest `size` for `owner`; its whole order at the level goes to the back of the queue."""
        if not size > 0:
            return
        q = self.book[m][side][j]
        old = 0.0
        for i, e in enumerate(q):
            if e[0] == owner:
                old = e[1]
                del q[i]
                break
        q.append([owner, old + size])

    def book_cancel(self, m, side, j, owner, size) -> float:
        """Cancel up to `size` of owner's order at a level; returns the cancelled size."""
        q = self.book[m][side][j]
        for i, e in enumerate(q):
            if e[0] == owner:
                c = min(max(size, 0.0), e[1])
                e[1] = e[1] - c
                if e[1] <= 0:
                    del q[i]
                return c
        return 0.0

    def as_arrays(self):
        """(qty, ahead) of shape (M, 2, G, A) and origin (M,) in the engine's layout."""
        qty = np.zeros((N_MARKETS, 2, self.g, self.n))
        ahead = np.zeros_like(qty)
        for m in range(N_MARKETS):
            for sd in (BID, ASK):
                for j in range(self.g):
                    before = 0.0
                    for owner, size in self.book[m][sd][j]:
                        qty[m, sd, j, owner] += size
                        ahead[m, sd, j, owner] = before
                        before += size
        return qty, ahead, np.array(self.origin)

    # ------------------------------------------------------------------ account helpers

    def asset_px(self):
        return [1.0, float(self.index[0]), float(self.index[1]), float(self.index[2])]

    def collateral_value(self, a: int) -> float:
        px, h = self.asset_px(), self.r["haircut"]
        v = 0.0
        for k in range(4):
            b = self.bal[a, k]
            v += (b * px[k] * (1.0 - h[k]) if b > 0 else b * px[k]) - self.debt[a, k] * px[k]
        return v

    def wallet_value(self, a: int) -> float:
        px = self.asset_px()
        return sum((self.bal[a, k] - self.debt[a, k]) * px[k] for k in range(4))

    def margin_balance(self, a: int) -> float:
        upnl = self.pos[a] * (self.mark - self.entry[a])
        if self.mode[a] == CROSS:
            return self.collateral_value(a) + upnl
        return self.iso[a] + upnl

    def equity(self, a: int) -> float:
        upnl = self.pos[a] * (self.mark - self.entry[a])
        if self.mode[a] == CROSS:
            return self.wallet_value(a) + upnl
        return self.iso[a] + upnl

    def open_perp_notional(self, a: int) -> float:
        tot = 0.0
        for sd in (BID, ASK):
            for j in range(self.g):
                tot += self.owner_qty(PERP, sd, j, a) * self.level_px(PERP, j)
        return tot

    def settle_perp(self, a: int, dq: float, px: float):
        """Perp fill dq at px for one account: position, entry, realized PnL, isolated margin."""
        if dq == 0:
            return
        pos0, entry0 = self.pos[a], self.entry[a]
        same = pos0 * dq >= 0
        closed = 0.0 if same else min(abs(dq), abs(pos0))
        realized = closed * (px - entry0) * _sign(pos0)
        new_pos = pos0 + dq
        flipped = (not same) and abs(dq) > abs(pos0)
        if new_pos == 0:
            new_entry = 0.0
        elif same:
            new_entry = (abs(pos0) * entry0 + abs(dq) * px) / abs(new_pos)
        elif flipped:
            new_entry = px
        else:
            new_entry = entry0
        self.pos[a], self.entry[a] = new_pos, new_entry
        if self.mode[a] == ISOLATED:
            usdt, self.iso[a], fund = self.isolated_fill(a, pos0, entry0, dq, px)
            self.bal[a, USDT] += usdt
            self.bal[self.ins, USDT] += fund
            self.n_iso_deficit += fund < 0  # coverage statistic
        else:
            self.bal[a, USDT] += realized

    def isolated_fill(self, a, pos0, entry0, dq, px):
        """(wallet change, new isolated margin, fund change) of an isolated fill: realized
        PnL into the margin; a partial close returns its fraction of a positive margin; a
        full close (or flip) settles all of it, a deficit paid by the insurance fund; an
        increase (a flip's whole new side) takes increase x px / lev from the wallet."""
        same = pos0 * dq >= 0
        closed = 0.0 if same else min(abs(dq), abs(pos0))
        realized = closed * (px - entry0) * _sign(pos0)
        new_pos = pos0 + dq
        all_closed = (not same) and abs(dq) >= abs(pos0)
        increase = abs(new_pos) if all_closed else max(abs(new_pos) - abs(pos0), 0.0)
        m1 = self.iso[a] + realized
        add_im = increase * px / max(self.lev[a], 1.0)
        if all_closed:
            return max(m1, 0.0) - add_im, add_im, min(m1, 0.0)
        release = max(m1, 0.0) * (closed / abs(pos0) if abs(pos0) > 0 else 0.0)
        return release - add_im, m1 - release + add_im, 0.0

    # ------------------------------------------------------------------ matching

    def walk(self, m: int, side: float, qty: float, limit: float) -> list[float]:
        """Per-level fills (indexed by level) of a taker of qty up to limit, best level first."""
        hit = ASK if side > 0 else BID
        order = range(self.g) if side > 0 else range(self.g - 1, -1, -1)
        fills = [0.0] * self.g
        before = 0.0
        for j in order:
            p = self.level_px(m, j)
            ok = p <= limit if side > 0 else p >= limit
            avail = self.level_tot(m, hit, j) if ok else 0.0
            f = min(max(qty - before, 0.0), avail)
            # a level reached only through rounding gets nothing (as the engine)
            fills[j] = f if f > float(np.finfo(np.float64).eps) * 64 * max(qty, before) else 0.0
            before += avail
        return fills

    def take(self, a, m, side, qty, limit, fee_rate=None):
        """Account a takes qty on market m (side +1 buy / -1 sell) up to limit; FIFO makers."""
        if not qty > 0:
            return 0.0, 0.0
        hit = ASK if side > 0 else BID
        fills = self.walk(m, side, qty, limit)
        maker_q: dict[int, float] = {}
        maker_n: dict[int, float] = {}
        filled = notional = 0.0
        fill_prices = []
        eps = float(np.finfo(np.float64).eps) * 64
        for j in range(self.g):
            x = fills[j]
            if not x > 0:
                continue
            p = self.level_px(m, j)
            queue = self.book[m][hit][j]
            scale = max(x, sum(e[1] for e in queue))
            before = 0.0
            got = 0.0
            for e in queue:  # FIFO: front of the queue first
                f = min(max(x - before, 0.0), e[1])
                # a remainder within rounding of zero is filled completely (as the engine)
                if x > before - eps * scale and e[1] - f <= eps * scale:
                    f = e[1]
                before += e[1]
                if f > 0:
                    maker_q[e[0]] = maker_q.get(e[0], 0.0) + f
                    maker_n[e[0]] = maker_n.get(e[0], 0.0) + f * p
                    e[1] -= f
                    got += f
            self.book[m][hit][j] = [e for e in queue if e[1] > 0]
            if got > 0:
                filled += got
                notional += got * p
                fill_prices.append(p)
        if filled <= 0:
            return 0.0, 0.0
        t_rate = self.taker_rate(a) if fee_rate is None else fee_rate
        fee_t = notional * t_rate
        if fee_rate is None and self._init_acct["own_taker_fee"][a]:
            self.n_own_taker += 1
        asset = MARKET_ASSET[m]
        if m != PERP:
            if side > 0:
                self.bal[a, asset] += filled
                self.bal[a, USDT] -= notional
                for o, n_o in maker_n.items():
                    self.bal[o, USDT] += n_o  # makers' asset was reserved in the book
            else:
                self.bal[a, asset] -= filled
                self.bal[a, USDT] += notional
                for o, q_o in maker_q.items():
                    self.bal[o, asset] += q_o  # makers' USDT was reserved in the book
        fee_m_total = 0.0
        for o, n_o in maker_n.items():
            fee_o = n_o * self.maker_rate(o)
            self.bal[o, USDT] -= fee_o
            self.acc["fees_paid"][o] += fee_o
            fee_m_total += fee_o
            self.n_own_maker += bool(self._init_acct["own_maker_fee"][o])
        self.bal[a, USDT] -= fee_t
        self.acc["fees_paid"][a] += fee_t
        self.bal[self.fees, USDT] += fee_t + fee_m_total
        if m == PERP:
            for o in sorted(maker_q):
                self.settle_perp(o, -side * maker_q[o], maker_n[o] / maker_q[o])
            self.settle_perp(a, side * filled, notional / filled)
        self.last[m] = max(fill_prices) if side > 0 else min(fill_prices)
        self.last_trade_t[m] = self.t
        self.acc["volume"][m] += filled
        self.acc["fees"] += fee_t + fee_m_total
        return filled, notional

    def cancel(self, a, m, sides=(BID, ASK)):
        """Cancel all of account a's orders on market m for the given sides, refunding reserves."""
        for sd in sides:
            for j in range(self.g):
                c = self.book_cancel(m, sd, j, a, self.owner_qty(m, sd, j, a))
                if m != PERP and c > 0:
                    if sd == BID:
                        self.bal[a, USDT] += c * self.level_px(m, j)
                    else:
                        self.bal[a, MARKET_ASSET[m]] += c

    def cancel_all(self, a):
        for m in range(N_MARKETS):
            self.cancel(a, m)

    # ------------------------------------------------------------------ phase 1: exogenous

    def exogenous(self, key):
        import jax  # only for the normal draws (see module docstring)
        import jax.numpy as jnp

        k_exo, _ = jax.random.split(key)
        k1, k2 = jax.random.split(k_exo)
        z = np.asarray(jax.random.normal(k1, (3,), jnp.float64))
        noise = self.venue_disp * np.asarray(jax.random.normal(k2, (3, self.n_venues), jnp.float64))
        dt = self.dt
        drift = [0.0, 0.0, 0.0]
        for start, n_ticks, asset, log_ret in self.shocks:
            if start <= self.t < start + n_ticks:
                drift[asset] += log_ret / max(n_ticks, 1)
        logp = [math.log(x) for x in self.ext_common]
        sig = self.sig
        new_base = logp[0] + (-0.5 * sig[0] ** 2 * dt + sig[0] * math.sqrt(dt) * z[0]) + drift[0]
        kappa = min(self.stable_rev * dt, 1.0)
        new_stable = logp[1] * (1 - kappa) + sig[1] * math.sqrt(dt) * z[1] + drift[1]
        prem = logp[2] - logp[0] - math.log(self.lst_rate)
        new_prem = prem * (1 - kappa) + sig[2] * math.sqrt(dt) * z[2] + drift[2]
        new_lst = new_base + math.log(self.lst_rate) + new_prem
        new_log = [new_base, new_stable, new_lst]
        alpha = min(dt / VOL_EWMA_S, 1.0)
        for i in range(3):
            common = math.exp(new_log[i])
            ret = new_log[i] - logp[i]
            self.vol[i] = math.sqrt((1 - alpha) * self.vol[i] ** 2 + alpha * ret**2 / dt)
            self.ext_common[i] = common
            for v in range(self.n_venues):
                self.ext[i, v] = common * (1.0 + noise[i, v])

    # ------------------------------------------------------------------ prices

    def index_price(self, cons, weights, clip, floor) -> float:
        """cons / weights: venues..., internal, redemption. Clipped around the median of the
        weighted legs other than the internal one (the internal one alone if it is the only
        weighted leg)."""
        k_int = len(cons) - 2
        active = [i for i, w in enumerate(weights) if w > 0]
        ref_legs = [i for i in active if i != k_int] or active
        med = float(np.median([cons[i] for i in ref_legs]))
        lo, hi = med * (1 - clip), med * (1 + clip)
        self.n_clipped += sum(not lo <= cons[i] <= hi for i in active)  # coverage statistic
        num = sum(weights[i] * min(max(cons[i], lo), hi) for i in active)
        den = sum(weights[i] for i in active)
        return max(num / max(den, 1e-12), floor)

    def live_weights(self, row: int, market: int) -> list[float]:
        """Index row's weights with its internal leg at 0 once stale (and not alone)."""
        w = [float(x) for x in self.r["index_weights"][row]]
        k_int = len(w) - 2
        stale = (self.t - self.last_trade_t[market]) * self.dt > INTERNAL_STALE_S
        if stale and w[k_int] > 0 and any(x > 0 for i, x in enumerate(w) if i != k_int):
            w[k_int] = 0.0
            self.n_stale += 1  # coverage statistic
        return w

    def compute_index(self):
        clip, floor = self.r["index_clip"], self.r["price_floor"]
        base = self.index_price(
            list(self.ext[0]) + [self.last[SPOT], self.ext_common[0]],
            self.live_weights(0, SPOT),
            clip[0],
            floor[0],
        )
        stab = self.index_price(
            list(self.ext[1]) + [self.last[STABLE_SPOT], 1.0],
            self.live_weights(1, STABLE_SPOT),
            clip[1],
            floor[1],
        )
        lst = self.index_price(
            list(self.ext[2]) + [self.last[LST_SPOT], self.lst_rate * base],
            self.live_weights(2, LST_SPOT),
            clip[2],
            floor[2],
        )
        return np.array([base, stab, lst])

    def basis_ma(self) -> float:
        n_win = int(min(max(np.round(self.basis_window_s / self.dt), 1), self.basis_window))
        n_have = min(len(self.basis_samples), n_win)
        if n_have == 0:
            return 0.0
        return sum(self.basis_samples[-n_have:]) / n_have

    def reprice(self):
        self.index = self.compute_index()
        interval = float(self.r["funding_interval_s"])
        ttf = max(self.next_funding_s - self.t * self.dt, 0.0)
        p1 = self.index[0] * (1.0 + self.funding_rate * ttf / interval)
        p2 = self.index[0] + self.basis_ma()
        self.mark = float(sorted([p1, p2, self.last[PERP]])[1])

    def funding_cap(self) -> float:
        """The cap set in the rules, or (0 = auto) 3% when tier 1 allows at most 25x, else
        0.75 x the tier-1 maintenance rate."""
        cap = float(self.r["funding_cap"])
        if cap > 0:
            return cap
        if float(self.r["tier_max_lev"][0]) <= 25.0:
            return 0.03
        return 0.75 * float(self.r["tier_mmr"][0])

    def impact_price(self, side: float, notional_target: float) -> float:
        hit = ASK if side > 0 else BID
        order = range(self.g) if side > 0 else range(self.g - 1, -1, -1)
        got_val = got_qty = before = 0.0
        for j in order:
            p = self.level_px(PERP, j)
            val = self.level_tot(PERP, hit, j) * p
            tv = min(max(notional_target - before, 0.0), val)
            before += val
            got_val += tv
            got_qty += tv / p
        return got_val / got_qty if got_qty > 0 else math.nan

    def prices_and_funding(self):
        self.reprice()
        idx = float(self.index[0])
        bid, ask = self.best(PERP)
        mid = 0.5 * (bid + ask) if (bid > 0 and math.isfinite(ask)) else float(self.last[PERP])
        self.basis_samples.append(mid - idx)
        imn = float(self.r["imn_quote"] * self.r["tier_max_lev"][0])
        ib, ia = self.impact_price(-1, imn), self.impact_price(1, imn)
        ib = idx if math.isnan(ib) else ib
        ia = idx if math.isnan(ia) else ia
        prem = (max(0.0, ib - idx) - max(0.0, idx - ia)) / idx
        i = float(self.prem_n + 1)
        self.prem_wsum += i * prem
        self.prem_w += i
        self.prem_n += 1
        avg = self.prem_wsum / self.prem_w
        interest, clamp = float(self.r["funding_interest"]), float(self.r["funding_clamp"])
        cap, interval = self.funding_cap(), float(self.r["funding_interval_s"])
        f8 = avg + min(max(interest - avg, -clamp), clamp)
        rate = min(max(f8 * interval / SECONDS_PER_8H, -cap), cap)
        self.funding_rate = rate
        settle = (self.t + 1) * self.dt >= self.next_funding_s
        if settle:
            for a in range(self.n):
                pay = -self.pos[a] * self.mark * rate
                if self.mode[a] == ISOLATED:
                    self.iso[a] += pay
                else:
                    self.bal[a, USDT] += pay
            self.prem_wsum = self.prem_w = 0.0
            self.prem_n = 0
            self.last_funding_rate = rate
            self.next_funding_s += interval
        return settle, (rate if settle else 0.0)

    # ------------------------------------------------------------------ phase 3: LP

    def liquidity(self, first_fill=False):
        lp = self.lp
        for m in range(N_MARKETS):
            # Quote centre: reference price blended with the current mid.
            ref = (
                float(np.mean(self.ext[0])),
                float(self.index[0]),
                float(np.mean(self.ext[1])),
                float(np.mean(self.ext[2])),
            )[m]
            bid, ask = self.best(m)
            mid = 0.5 * (bid + ask) if (bid > 0 and math.isfinite(ask)) else ref
            w = self.lp_refw[m]
            center = w * ref + (1 - w) * mid
            # Re-centre the grid when the centre is more than a quarter grid off the middle.
            off = center / self.tick[m] - self.origin[m] - self.g / 2
            k = int(np.round(off)) if abs(off) > self.g / 4 else 0
            if k != 0:
                old = self.book[m]
                new = [[[] for _ in range(self.g)] for _ in (BID, ASK)]
                for sd in (BID, ASK):
                    for j in range(self.g):
                        if 0 <= j - k < self.g:
                            new[sd][j - k] = old[sd][j]
                        elif m != PERP:  # dropped: refund the spot reserve
                            for owner, size in old[sd][j]:
                                if sd == BID:
                                    self.bal[owner, USDT] += size * self.level_px(m, j)
                                else:
                                    self.bal[owner, MARKET_ASSET[m]] += size
                self.book[m] = new
                self.origin[m] += k
            vi = {SPOT: 0, PERP: 0, STABLE_SPOT: 1, LST_SPOT: 2}[m]
            ratio = self.vol[vi] / self.vol_ref[vi]
            scale = 1.0 / (1.0 + self.lp_withdraw[m] * max(ratio - 1.0, 0.0))
            gap = self.lp_half[m] * self.tick[m]
            tgt = [[0.0] * self.g, [0.0] * self.g]
            for j in range(self.g):
                p = self.level_px(m, j)
                dist = abs(p - center) / center * 1e4
                prof = self.lp_depth[m] * math.exp(-dist / self.lp_decay[m]) * scale
                if p <= center - gap + 1e-9 * center:
                    tgt[BID][j] = prof
                if p >= center + gap - 1e-9 * center:
                    tgt[ASK][j] = prof
            # Pull any excess at once.
            for sd in (BID, ASK):
                for j in range(self.g):
                    ex = max(self.owner_qty(m, sd, j, lp) - tgt[sd][j], 0.0)
                    if ex > 0:
                        c = self.book_cancel(m, sd, j, lp, ex)
                        if m != PERP:
                            if sd == BID:
                                self.bal[lp, USDT] += c * self.level_px(m, j)
                            else:
                                self.bal[lp, MARKET_ASSET[m]] += c
            # Refill a fraction of the gap, never crossing the book.
            fill = 1.0 if first_fill else min(self.lp_res[m] * self.dt, 1.0)
            bid, ask = self.best(m)
            add = [[0.0] * self.g, [0.0] * self.g]
            for j in range(self.g):
                p = self.level_px(m, j)
                if p < ask:
                    add[BID][j] = max(tgt[BID][j] - self.owner_qty(m, BID, j, lp), 0.0) * fill
                if p > bid:
                    add[ASK][j] = max(tgt[ASK][j] - self.owner_qty(m, ASK, j, lp), 0.0) * fill
            if m != PERP:
                asset = MARKET_ASSET[m]
                cost = sum(add[BID][j] * self.level_px(m, j) for j in range(self.g))
                sc = min(1.0, max(self.bal[lp, USDT], 0.0) / max(cost, 1e-30))
                add[BID] = [x * sc for x in add[BID]]
                need = sum(add[ASK])
                sc = min(1.0, max(self.bal[lp, asset], 0.0) / max(need, 1e-30))
                add[ASK] = [x * sc for x in add[ASK]]
                self.bal[lp, USDT] -= sum(add[BID][j] * self.level_px(m, j) for j in range(self.g))
                self.bal[lp, asset] -= sum(add[ASK])
            for sd in (BID, ASK):
                for j in range(self.g):
                    self.book_add(m, sd, j, lp, add[sd][j])

    # ------------------------------------------------------------------ phase 4: orders

    def validate(self, o) -> int:
        kind, a, m, side, qty, price = o
        if kind == KIND_NONE:
            return OK
        valid = (
            math.isfinite(qty)
            and math.isfinite(price)
            and 1 <= kind < N_KINDS
            and 0 <= a < self.n
            and 0 <= m < N_MARKETS
        )
        priced = kind in (KIND_LIMIT, KIND_POST_ONLY)  # a limit price is required
        if kind in (KIND_MARKET, KIND_LIMIT, KIND_POST_ONLY) and side not in (1, -1):
            valid = False
        if kind != KIND_CANCEL and not qty > 0:
            valid = False
        if (priced and not price > 0) or (not priced and not price >= 0):
            valid = False
        if not valid:
            return REJ_INVALID
        return REJ_SYSTEM if a >= self.n_user else OK

    def trade(self, o, is_limit: bool, post_only: bool = False):
        """Market order (is_limit False), limit order, or post-only (is_limit and
        post_only: a limit order rejected with REJ_WOULD_TAKE when any of it would fill
        now, otherwise all of it rests)."""
        kind, a, m, side, qty, price = o
        tick = self.tick[m]
        mark = self.mark
        ref = mark if m == PERP else float(self.last[m])
        band = float(self.r["price_band"][m])
        # Limit price on the grid: buys round down, sells round up.
        raw = price / tick
        j_tick = math.floor(raw + 1e-6) if side > 0 else math.ceil(raw - 1e-6)
        level = j_tick - self.origin[m]
        px_lim = float(j_tick) * tick
        bound = ref * (1 + band) if side > 0 else ref * (1 - band)
        if is_limit:
            limit = px_lim
        elif price > 0:  # a market order's own price, never past the band
            limit = min(price, bound) if side > 0 else max(price, bound)
        else:
            limit = bound
        dry = self.walk(m, side, qty, limit)
        f_dry = sum(dry)
        n_dry = sum(x * self.level_px(m, j) for j, x in enumerate(dry))
        avg_dry = n_dry / f_dry if f_dry > 0 else 0.0
        rest = qty - f_dry if is_limit else 0.0
        reason = OK
        if is_limit:
            if not 0 <= level < self.g:
                reason = REJ_OUT_OF_RANGE
            elif not abs(px_lim - ref) <= band * ref:
                reason = REJ_PRICE_BAND
            elif post_only and f_dry > 0:
                reason = REJ_WOULD_TAKE
            elif rest > 1e-6 * qty and not self.can_rest(a):
                reason = REJ_QUEUE_FULL
        elif f_dry <= 0:
            reason = REJ_NO_LIQUIDITY
        if reason == OK:
            taker_fee = self.taker_rate(a)
            if m != PERP:
                asset = MARKET_ASSET[m]
                if side > 0:
                    need = n_dry * (1 + taker_fee) + rest * px_lim
                    ok = self.bal[a, USDT] >= need - TINY * need
                else:
                    ok = self.bal[a, asset] >= qty * (1 - 1e-7)
                reason = OK if ok else REJ_BALANCE
            else:
                pos = self.pos[a]
                new_pos = pos + side * qty
                n_new = abs(new_pos) * mark
                # Orders that increase the position or flip it (the new side in full) are
                # checked; orders that only reduce it are not.
                if abs(new_pos) > abs(pos) or pos * new_pos < 0:
                    lev = self.lev[a]
                    fee = n_dry * taker_fee
                    impact = side * f_dry * (mark - avg_dry) - fee
                    orders_im = (self.open_perp_notional(a) + rest * px_lim) / lev
                    im_new = n_new / lev
                    if self.mode[a] == CROSS:
                        free = self.margin_balance(a) + impact - im_new - orders_im
                    else:  # the wallet pays what settlement takes from it
                        to_wallet = self.isolated_fill(
                            a, pos, self.entry[a], side * f_dry, avg_dry
                        )[0]
                        free = self.collateral_value(a) + to_wallet - fee - orders_im
                    if n_new > self.r["position_limit"]:
                        reason = REJ_POSITION_LIMIT
                    elif lev > self.max_lev(n_new):
                        reason = REJ_LEVERAGE
                    elif free < 0:
                        reason = REJ_MARGIN
        if reason != OK:
            return reason, 0.0, 0.0, qty
        if post_only:  # nothing of it is marketable (f_dry == 0): no walk
            filled, notional = 0.0, 0.0
        else:
            filled, notional = self.take(a, m, side, qty, limit)
        avg = notional / filled if filled > 0 else 0.0
        if not is_limit:
            return reason, filled, avg, qty - filled
        rest_sz = max(qty - filled, 0.0)
        if rest_sz <= 1e-6 * qty:  # rounding remainder of a complete fill
            rest_sz = 0.0
        if rest_sz > 0:
            self.book_add(m, BID if side > 0 else ASK, level, a, rest_sz)
            if m != PERP:
                if side > 0:
                    self.bal[a, USDT] -= rest_sz * px_lim
                else:
                    self.bal[a, MARKET_ASSET[m]] -= rest_sz
        return reason, filled, avg, 0.0

    def process_order(self, o):
        kind, a, m, side, qty, price = o
        reason = self.validate(o)
        if reason != OK:
            return reason, 0.0, 0.0, (qty if math.isfinite(qty) else 0.0)
        if kind == KIND_NONE:
            return OK, 0.0, 0.0, 0.0
        if kind == KIND_MARKET:
            return self.trade(o, is_limit=False)
        if kind == KIND_LIMIT:
            return self.trade(o, is_limit=True)
        if kind == KIND_POST_ONLY:
            return self.trade(o, is_limit=True, post_only=True)
        if kind == KIND_CANCEL:
            sides = [sd for sd, on in ((BID, side >= 0), (ASK, side <= 0)) if on]
            self.cancel(a, m, sides)
            return OK, 0.0, 0.0, 0.0
        raise NotImplementedError(f"reference: order kind {kind} is not modelled")

    # ------------------------------------------------------------------ phase 7: liquidation

    def liquidate(self, a: int):
        acc = self.acc
        r = self.r
        mark = self.mark
        if not self.needs_liquidation(a):
            return
        self.cancel_all(a)
        pos = self.pos[a]
        s = _sign(pos)
        # Bankruptcy price at margin balance 0 (haircuts applied); solvent: MB > 0.
        mb = self.margin_balance(a)
        p_bk = mark if pos == 0 else mark - mb / pos
        solvent = mb > 0
        # Partial liquidation (solvent accounts): cut back to just under the tier's floor.
        k = self.tier_index(abs(pos) * mark)
        if r["partial_liquidation"] > 0 and k > 0 and solvent:
            cut = abs(pos) - r["tier_floor"][k] * (1 - 1e-6) / mark
        else:
            cut = abs(pos)
        cut = min(max(cut, 0.0), abs(pos))
        # IOC at the bankruptcy price, no trading fee.
        if s > 0:
            lim = max(p_bk, 0.0)
        else:
            lim = p_bk if p_bk > 0 else math.inf
        f_fill, n_fill = self.take(a, PERP, -s, cut, lim, fee_rate=0.0) if s != 0 else (0.0, 0.0)
        # A solvent account keeps what the book did not take (next round); an insolvent
        # one's goes to the insurance fund within its cap on its marked equity (unrealized
        # losses count), the rest to ADL (if on).
        rem = 0.0 if solvent else max(cut - f_fill, 0.0)
        self.n_kept += solvent and cut - f_fill > 0  # coverage statistic
        ins = self.ins
        fund = self.equity(ins)
        cap_q = r["if_position_cap"] * max(fund, 0.0) / max(mark, TINY)
        room = max(cap_q - s * self.pos[ins], 0.0)
        x_if = min(rem, room) if r["adl_on"] > 0 else rem
        x_adl = rem - x_if
        self.settle_perp(a, -s * x_if, p_bk)
        self.settle_perp(ins, s * x_if, p_bk)
        # ADL ranking on the state after the takeover: PnL% x effective leverage.
        cands = []
        for b in range(self.lp + 1):
            if b == a or _sign(self.pos[b]) != -s or self.pos[b] == 0:
                continue
            pb = self.pos[b]
            entry_val = abs(pb) * self.entry[b]
            pnl_pct = pb * (mark - self.entry[b]) / max(entry_val, 1e-12)
            eff_lev = abs(pb) * mark / max(self.margin_balance(b), 1e-12)
            score = pnl_pct * eff_lev if pnl_pct > 0 else pnl_pct / max(eff_lev, 1e-12)
            cands.append((-score, b))
        cands.sort()  # highest score first; ties by account index
        need = x_adl
        taken = []
        for _, b in cands:
            x = min(max(need, 0.0), abs(self.pos[b]))
            need -= abs(self.pos[b])
            taken.append((b, x))
        adl_total = sum(x for _, x in taken)
        for b, x in taken:
            self.settle_perp(b, s * x, p_bk)
        self.settle_perp(a, -s * adl_total, p_bk)
        left = x_adl - adl_total  # what ADL could not place stays with the fund
        self.settle_perp(a, -s * left, p_bk)
        self.settle_perp(ins, s * left, p_bk)
        for b, x in taken:  # deleveraged accounts' open orders are cancelled
            if x > 0:
                self.cancel_all(b)
        # Clearance fee to the fund, capped at the margin balance left.
        liq_notional = n_fill + (x_if + x_adl) * p_bk
        fee = min(r["liq_fee"] * liq_notional, max(self.margin_balance(a), 0.0))
        iso = self.mode[a] == ISOLATED
        if iso:
            self.iso[a] -= fee
        else:
            self.bal[a, USDT] -= fee
        self.bal[ins, USDT] += fee
        if iso and self.pos[a] == 0:  # closed isolated position: margin back, deficit to the fund
            im = self.iso[a]
            self.bal[a, USDT] += max(im, 0.0)
            self.bal[ins, USDT] += min(im, 0.0)
            self.iso[a] = 0.0
        bad = 0.0
        if not iso or pos == 0:  # a flat isolated account: its wallet is under water
            # Repay debts from same-asset balances, then sell collateral for a USDT deficit.
            for k2 in range(4):
                rep = min(max(self.bal[a, k2], 0.0), self.debt[a, k2])
                self.bal[a, k2] -= rep
                self.bal[self.outside, k2] += rep
                self.debt[a, k2] -= rep
            # Sell collateral for the USDT deficit plus the debts still unpaid (at index),
            # then settle those debts with the lender in USDT.
            px_a = self.asset_px()
            unpaid = [self.debt[a, k2] for k2 in range(4)]
            unpaid_usdt = sum(unpaid[k2] * px_a[k2] for k2 in range(4))
            taker_fee = self.taker_rate(a)  # what `take` charges the account below
            for asset, m in SALE_ORDER:
                deficit = max(unpaid_usdt - self.bal[a, USDT], 0.0)
                quote = deficit * (1 + taker_fee)
                # No lower than the tick's opening index by the sale band.
                lim = self.sale_ref[asset] * (1 - float(r["sale_band"]))
                held = max(self.bal[a, asset], 0.0)
                qty = self.engine_sale_qty(asset, min(self.quote_qty(m, quote, lim), held))
                self.n_banded += qty < min(self.quote_qty(m, quote, 0.0), held) * (1 - 1e-9)
                sold, proceeds = self.take(a, m, -1, qty, lim)
                self.n_own_rate_sales += sold > 0 and bool(self._init_acct["own_taker_fee"][a])
                acc["coll_sold"][asset] += sold
                acc["coll_sold_usdt"] += proceeds
            self.bal[a, USDT] -= unpaid_usdt
            self.bal[self.outside, USDT] += unpaid_usdt
            for k2 in range(4):
                self.debt[a, k2] = 0.0
            # Position closed, USDT still negative: the fund resets the wallet and takes
            # collateral worth the deficit at index (in sale order).
            if self.pos[a] == 0 and self.bal[a, USDT] < 0:
                self.n_bust += 1  # coverage statistic
                hole = -self.bal[a, USDT]
                owed = hole
                for asset, _m in SALE_ORDER:
                    units = min(max(self.bal[a, asset], 0.0), owed / max(px_a[asset], 1e-9))
                    self.bal[a, asset] -= units
                    self.bal[ins, asset] += units
                    owed = max(owed - units * px_a[asset], 0.0)
                self.bal[a, USDT] += hole
                self.bal[ins, USDT] -= hole
                bad = self.write_off()
        liq_n = n_fill + (x_if + x_adl) * p_bk
        if s > 0:
            acc["liq_long"] += liq_n
        elif s < 0:
            acc["liq_short"] += liq_n
        if a not in acc["liq_set"]:  # distinct accounts per tick
            acc["liq_set"].add(a)
            acc["liq_accounts"] += 1
        acc["takeover"] += x_if * p_bk + left * p_bk
        acc["adl_count"] += sum(1 for _, x in taken if x > 0)
        acc["adl_notional"] += adl_total * p_bk
        acc["bad_debt"] += max(bad, 0.0)

    def engine_sale_qty(self, asset: int, qty: float) -> float:
        return qty if qty * self.sale_ref[asset] >= MIN_SALE_USDT else 0.0

    def quote_qty(self, m: int, quote: float, lim: float) -> float:
        """Units to sell into market m's bids (from the top, none below lim) to raise quote."""
        need_q, before = 0.0, 0.0
        for j in range(self.g - 1, -1, -1):
            p = self.level_px(m, j)
            tot = self.level_tot(m, BID, j) if p >= lim else 0.0
            need_q += min(max((quote - before) / p, 0.0), tot)
            before += tot * p
        return need_q

    def write_off(self) -> float:
        """Where the fund's USDT and marked equity are both negative, the smaller shortfall
        is bad debt: credited to the fund and counted in `bad_debt`. Returns it."""
        cash = self.bal[self.ins, USDT]
        w = max(min(-cash, -self.equity(self.ins)), 0.0)
        self.bal[self.ins, USDT] += w
        self.bad_debt += w
        return w

    def needs_liquidation(self, a: int) -> bool:
        """Margin balance under maintenance at mark, for a user account with any exposure."""
        if a >= self.n_user:
            return False
        exposure = self.pos[a] != 0 or self.debt[a].sum() > 0 or self.bal[a, USDT] < 0
        mm = self.maint_margin(abs(self.pos[a]) * self.mark)
        mb = self.margin_balance(a)
        if self.mode[a] == ISOLATED and self.pos[a] == 0:  # a flat isolated account's wallet
            mb = self.collateral_value(a)
        return bool(exposure and mb < mm)

    def charge_interest(self):
        """At a funding settlement: user accounts pay (debts at index + negative USDT) x
        borrow interest per 8 h x interval / 8 h, in USDT, to the lender (outside)."""
        px = self.asset_px()
        rate = float(self.r["borrow_interest"]) * float(self.r["funding_interval_s"])
        rate /= SECONDS_PER_8H
        for a in range(self.n_user):
            owed = sum(self.debt[a, k] * px[k] for k in range(4))
            owed += max(-self.bal[a, USDT], 0.0)
            self.n_interest += owed > 0  # coverage statistic
            self.bal[a, USDT] -= owed * rate
            self.bal[self.outside, USDT] += owed * rate

    def margin_ratio(self, a: int) -> float:
        """MB / MM (MM floored at 1e-9, the ratio clipped to +/- 1e30): the queue's key."""
        mm = self.maint_margin(abs(self.pos[a]) * self.mark)
        return min(max(self.margin_balance(a) / max(mm, TINY), -1e30), 1e30)

    def liquidation_engine(self):
        for _ in range(self.cascade_rounds):
            self.reprice()
            # This round's queue: accounts under maintenance at its start, lowest margin
            # ratio first (ties by index), at most liq_per_round of them; each is re-checked
            # at its turn.
            queue = [a for a in range(self.n) if self.needs_liquidation(a)]
            by_index = queue[: self.liq_per_round]
            queue.sort(key=lambda a: (self.margin_ratio(a), a))
            self.n_reordered += queue[: self.liq_per_round] != by_index  # coverage statistic
            self.n_deferred += max(len(queue) - self.liq_per_round, 0)  # coverage statistic
            for a in queue[: self.liq_per_round]:
                self.liquidate(a)
        self.reprice()
        self.acc["liq_backlog"] = sum(self.needs_liquidation(a) for a in range(self.n))
        # The fund unwinds a fraction of its position into the book (normal taker fee).
        pos = self.pos[self.ins]
        if pos != 0:
            frac = min(float(self.r["if_unwind_per_s"]) * self.dt, 1.0)
            side = -_sign(pos)
            band = float(self.r["price_band"][PERP])
            lim = self.mark * (1 + band) if side > 0 else self.mark * (1 - band)
            self.take(self.ins, PERP, side, abs(pos) * frac, lim)
        # ... and sells the collateral it took over into its spot books at the same rate, or
        # what raises its USDT overdraft if more, no lower than the tick's opening index by
        # the sale band.
        frac = min(float(self.r["if_unwind_per_s"]) * self.dt, 1.0)
        band = float(self.r["sale_band"])
        for asset, m in SALE_ORDER:
            held = max(self.bal[self.ins, asset], 0.0)
            lim = self.sale_ref[asset] * (1 - band)
            quote = max(-self.bal[self.ins, USDT], 0.0) * (1 + self.taker_rate(self.ins))
            qty = self.engine_sale_qty(
                asset, min(max(held * frac, self.quote_qty(m, quote, lim)), held)
            )
            sold, proceeds = self.take(self.ins, m, -1, qty, lim)
            self.n_banded += sold < qty * (1 - 1e-9)  # stopped by the band (or the book)
            self.acc["coll_sold"][asset] += sold
            self.acc["coll_sold_usdt"] += proceeds

    # ------------------------------------------------------------------ step

    def step(self, key, orders):
        """One tick. orders: list of (kind, account, market, side, qty, price) tuples."""
        self.acc = dict(
            volume=np.zeros(N_MARKETS),
            fees=0.0,
            fees_paid=np.zeros(self.n),
            liq_long=0.0,
            liq_short=0.0,
            liq_accounts=0,
            liq_set=set(),
            coll_sold=np.zeros(4),
            coll_sold_usdt=0.0,
            takeover=0.0,
            adl_count=0,
            adl_notional=0.0,
            bad_debt=0.0,
            liq_backlog=0,
        )
        self.exogenous(key)
        self.reprice()
        self.sale_ref = self.asset_px()
        # (rule schedule: empty by construction, see __init__)
        self.liquidity()
        outs = [self.process_order(o) for o in orders]
        # (transfers: none in flight; the reference does not model transfer orders)
        settled, paid = self.prices_and_funding()
        if settled:
            self.charge_interest()
        self.liquidation_engine()
        self.acc["bad_debt"] += self.write_off()  # the fund's other losses it cannot back
        self.t += 1
        ev = dict(self.acc)
        ev["order_reason"] = np.array([x[0] for x in outs], np.int32)
        ev["order_filled"] = np.array([x[1] for x in outs])
        ev["order_avg_px"] = np.array([x[2] for x in outs])
        ev["order_unfilled"] = np.array([x[3] for x in outs])
        ev["funding_settled"] = settled
        ev["funding_paid"] = paid
        ev["insurance_fund"] = float(self.bal[self.ins, USDT])
        ev["insurance_equity"] = self.equity(self.ins)
        self.events = ev
        return ev


def _np_tree(state) -> dict:
    """Engine SimState -> nested dict of NumPy arrays, the books in the per-account layout
    (M, 2, G, A) the reference keeps (the engine's owner axis is maker slots)."""
    import dataclasses

    import jax

    def conv(x):
        if dataclasses.is_dataclass(x):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        return np.asarray(x)

    s = conv(jax.device_get(state))
    book = s["book"]
    slots = book.pop("owner")
    onehot = (slots[:, None] == np.arange(len(s["acct"]["pos"]))[None, :]).astype(float)
    book["qty"], book["ahead"] = book["qty"] @ onehot, book["ahead"] @ onehot
    return s
