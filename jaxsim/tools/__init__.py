"""Scenario tools built on the engine (`jaxsim`): they run scenarios and report on them.

- `python -m jaxsim.tools`: a scenario batched over seeds, a short per-seed summary.
- `python -m jaxsim.tools.simulate`: the same batch with the full metrics table, the
  tick-event CSV, the per-seed summary CSV and the dashboard (`simulate`).
- `python -m jaxsim.tools.sweep`: a grid of rule parameters x seeds as one sharded program
  (`sweep`, `sweep_spec`, `sweep_report`).

`cli` holds what the commands share (arguments, seeds, number formats, tables) and `plots`
the matplotlib figures (dashboard, heatmaps). The episode metrics live in `jaxsim.metrics`.
"""
