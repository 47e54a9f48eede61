"""`rgb_array` frames of an env's recent window: prices, basis, own position and equity.

Drawn with matplotlib's Agg canvas on a private `Figure` (no pyplot, no display), so it runs
headless and inside `gymnasium.wrappers.RecordVideo`. matplotlib is imported on first use.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import numpy as np

# Quantities kept per step for the frame (keys of the step info dicts).
FIELDS = ("time", "mark_price", "index_price", "spot_price", "basis", "position", "equity")


class History:
    """Ring buffer of the last `window` steps of the fields a frame shows."""

    def __init__(self, window: int = 300):
        if int(window) < 2:
            raise ValueError(f"render window must be >= 2 steps, got {window}")
        self.window = int(window)
        self.rows: deque[tuple[float, ...]] = deque(maxlen=self.window)

    def clear(self) -> None:
        self.rows.clear()

    def append(self, values: Mapping[str, float]) -> None:
        """Add one step; `values` maps each of FIELDS to a number."""
        self.rows.append(tuple(float(np.asarray(values[k])) for k in FIELDS))

    def arrays(self) -> dict[str, np.ndarray]:
        data = np.asarray(self.rows, np.float64).reshape(-1, len(FIELDS))
        return {k: data[:, i] for i, k in enumerate(FIELDS)}


def render_frame(
    history: History, title: str = "", width: int = 640, height: int = 480
) -> np.ndarray:
    """(height, width, 3) uint8 frame: prices, basis (bp), position and equity."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h = history.arrays()
    dpi = 80
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax_px, ax_basis, ax_pos = fig.subplots(3, 1, sharex=True)
    t = h["time"]
    ax_px.plot(t, h["mark_price"], label="mark", lw=1.2)
    ax_px.plot(t, h["index_price"], label="index", lw=1.0)
    ax_px.plot(t, h["spot_price"], label="spot", lw=0.8, alpha=0.8)
    ax_px.legend(loc="upper left", fontsize=7)
    ax_px.set_ylabel("USDT", fontsize=8)
    ax_basis.plot(t, h["basis"] * 1e4, color="tab:purple", lw=1.0)
    ax_basis.axhline(0.0, color="grey", lw=0.5)
    ax_basis.set_ylabel("basis bp", fontsize=8)
    ax_pos.plot(t, h["position"], color="tab:green", lw=1.0)
    ax_pos.set_ylabel("position", fontsize=8)
    ax_eq = ax_pos.twinx()
    ax_eq.plot(t, h["equity"], color="tab:red", lw=1.0)
    ax_eq.set_ylabel("equity", fontsize=8)
    ax_pos.set_xlabel("step", fontsize=8)
    for ax in (ax_px, ax_basis, ax_pos, ax_eq):
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    frame = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return frame
