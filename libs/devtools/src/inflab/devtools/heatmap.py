"""Draw an influence matrix (evaluation questions x training pairs) as a PNG heatmap.

The colour scale is diverging and centred on zero: red cells are training pairs that pushed
the model towards its answer to that question (proponents), blue cells pushed against it
(opponents), white is no influence. The scale is symmetric (-m..+m with m the largest
magnitude) so the eye compares reds and blues honestly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100
COLORMAP = "RdBu_r"


@dataclass(frozen=True)
class RenderedHeatmap:
    path: Path
    width_px: int
    height_px: int
    #: ``cell_centres[i][j]`` = (x, y) pixel of cell (eval i, train j), y counted from the
    #: top as in the image array, so callers (and tests) can look at a cell's colour.
    cell_centres: list[list[tuple[int, int]]]


def short_label(text: str, limit: int = 40) -> str:
    """One line, at most ``limit`` characters, cut at a word where possible."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def figure_size(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Inches: room for row labels (short question text) on the left, rotated column
    labels below, and cells that stay readable for small matrices."""
    width = 4.5 + 0.6 * n_cols + 1.2  # labels + cells + colorbar
    height = 2.2 + 0.5 * n_rows
    return (max(width, 6.0), max(height, 3.0))


def _pixel(ax, height_px: int, row: int, col: int) -> tuple[int, int]:
    x, y = ax.transData.transform((col, row))
    return int(round(x)), int(round(height_px - y))  # display y grows upwards, image rows down


def render_influence_heatmap(
    scores: Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    path: Path,
) -> RenderedHeatmap:
    matrix = np.asarray(scores, dtype=float)
    if matrix.ndim != 2 or matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"influence matrix has shape {matrix.shape}, labels say {(len(row_labels), len(col_labels))}"
        )
    finite = matrix[np.isfinite(matrix)]
    bound = float(np.abs(finite).max()) if finite.size else 0.0
    bound = bound if bound > 0 else 1.0  # an all-zero matrix still gets a valid scale

    size = figure_size(*matrix.shape)
    fig, ax = plt.subplots(figsize=size, dpi=DPI)
    try:
        image = ax.imshow(matrix, cmap=COLORMAP, vmin=-bound, vmax=bound, aspect="auto")
        ax.set_xticks(range(len(col_labels)), [short_label(c, 24) for c in col_labels], rotation=45, ha="right")
        ax.set_yticks(range(len(row_labels)), [short_label(r, 48) for r in row_labels])
        ax.set_xlabel("training pair")
        ax.set_ylabel("evaluation question")
        ax.set_title(title, fontsize=10)
        # Thin white grid between cells so neighbouring cells of similar colour stay apart.
        ax.set_xticks(np.arange(-0.5, matrix.shape[1], 1), minor=True)
        ax.set_yticks(np.arange(-0.5, matrix.shape[0], 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=1)
        ax.tick_params(which="minor", length=0)
        colorbar = fig.colorbar(image, ax=ax)
        colorbar.set_label("influence (red: helped, blue: hurt)")
        fig.tight_layout()

        # Cell centres in pixels, measured after layout (savefig at the figure's own dpi and
        # without bbox_inches keeps the same canvas).
        fig.canvas.draw()
        width_px, height_px = fig.canvas.get_width_height()
        rows, cols = matrix.shape
        centres = [[_pixel(ax, height_px, row, col) for col in range(cols)] for row in range(rows)]
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return RenderedHeatmap(path=path, width_px=width_px, height_px=height_px, cell_centres=centres)
