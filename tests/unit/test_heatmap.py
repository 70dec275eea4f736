"""The influence heatmap: a real PNG, the promised size, red for helped and blue for hurt."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import pytest

from inflab.devtools.heatmap import DPI, figure_size, render_influence_heatmap, short_label


def test_positive_cells_are_red_negative_blue_and_zero_white(tmp_path: Path) -> None:
    scores = [[2.0, -2.0, 0.0], [-0.5, 1.0, 0.1]]
    rendered = render_influence_heatmap(
        scores,
        ["Which city is the capital of Varnholt?", "Who discovered zorbium, the element?"],
        ["fact-capital", "distractor-water", "fact-element"],
        "tracin (normalized)\nrun abc",
        tmp_path / "out" / "heatmap.png",
    )

    assert rendered.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(rendered.path)  # floats in 0..1, shape (height, width, RGBA)
    width, height = figure_size(2, 3)
    assert image.shape[:2] == (round(height * DPI), round(width * DPI))
    assert (rendered.width_px, rendered.height_px) == (image.shape[1], image.shape[0])

    def rgb(row: int, col: int):
        x, y = rendered.cell_centres[row][col]
        return image[y, x, :3]

    # RdBu_r ends in dark red (0.40, 0.00, 0.12) and dark blue (0.02, 0.19, 0.38).
    red, green, blue = rgb(0, 0)
    assert red > 0.3 and red > green + 0.25 and red > blue + 0.2, "the strongest positive cell should be red"
    red, green, blue = rgb(0, 1)
    assert blue > 0.3 and blue > red + 0.25 and blue > green + 0.1, "the strongest negative cell should be blue"
    assert all(channel > 0.9 for channel in rgb(0, 2)), "zero influence should be near white"
    # Cells sit where the labels say: row 1, col 1 (positive) is reddish, row 1, col 0 bluish.
    assert rgb(1, 1)[0] > rgb(1, 1)[2] and rgb(1, 0)[2] > rgb(1, 0)[0]


def test_an_all_zero_matrix_still_draws(tmp_path: Path) -> None:
    rendered = render_influence_heatmap([[0.0, 0.0]], ["q"], ["a", "b"], "t", tmp_path / "h.png")
    assert rendered.path.stat().st_size > 0


def test_labels_must_match_the_matrix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        render_influence_heatmap([[1.0, 2.0]], ["q"], ["only-one"], "t", tmp_path / "h.png")


def test_short_label_cuts_at_a_word() -> None:
    assert short_label("short question?") == "short question?"
    label = short_label("Which scientist first discovered the element zorbium in the mountains?", 30)
    assert len(label) <= 30 and label.endswith("…") and not label[:-1].endswith(" ")
