"""The exchange's mechanisms, one module each; `jaxsim.engine.step` calls them in order.

- `accounts`: valuations (asset prices, margin balances, equity) and maker slots
- `matching`: taking liquidity and cancelling (book walk, FIFO maker credit, settlement)
- `orders`: order validation, pre-trade checks and the order kinds, processed in sequence
- `margin_checks`: initial margin in use, allowed notional, rule breaches, maintenance
- `collateral`: transfers between venues, borrow/repay, a liquidation's collateral sales
- `exogenous`: the external venues' prices
- `index_mark`: index and mark prices
- `funding`: premium samples, the funding rate and its settlement
- `liquidity`: the liquidity provider's quotes
- `schedule`: rule changes and their enforcement
- `liquidation`: the cascade rounds and each account's liquidation
- `insurance`: fund takeover, auto-deleveraging, bankrupt accounts, the fund's unwind
- `tick_acc`: what a tick records for its events, by name
"""
