"""Plain-text tables and line plots for the command-line reports (benchmarks, `wvq repro`,
`wvq train`): one format, written once. matplotlib is imported only when a plot is drawn, so
that importing this module costs nothing and the library does not depend on it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Column", "format_table", "line_plots"]

MAX_PANEL_COLUMNS = 3
# Series this short are drawn with markers: a single evaluation would be invisible as a line.
MARKERS_BELOW = 50


@dataclass(frozen=True)
class Column:
    """One table column: ``template.format(row[key])`` aligned in ``width`` characters."""

    title: str
    key: str
    width: int
    template: str = "{}"
    left: bool = False

    def fit(self, text: str) -> str:
        return f"{text:<{self.width}}" if self.left else f"{text:>{self.width}}"

    def cell(self, row: Mapping) -> str:
        value = row[self.key]
        return self.fit("-" if value is None else self.template.format(value))


def format_table(
    columns: Sequence[Column],
    rows: Iterable[Mapping],
    *,
    group: Callable[[Mapping], object] | None = None,
) -> str:
    """Header, a dashed rule, one line per row; with group (a function of the row), a blank
    line wherever group(row) changes."""
    header = " ".join(column.fit(column.title) for column in columns)
    lines = [header, "-" * len(header)]
    previous = None
    for index, row in enumerate(rows):
        if group is not None:
            key = group(row)
            if index > 0 and key != previous:
                lines.append("")
            previous = key
        lines.append(" ".join(column.cell(row) for column in columns))
    return "\n".join(lines)


def line_plots(
    path,
    panels: Sequence[tuple[str, dict[str, tuple[list, list]]]],
    *,
    xlabel: str = "step",
    logy: Sequence[str] = (),
) -> Path | None:
    """One figure, one panel per (title, {label: (xs, ys)}); saved to path with the Agg backend;
    None when matplotlib is missing. Panels whose title is in ``logy`` get a log y-axis; all
    panels span the same x range, so that sparse series line up with dense ones."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    columns = min(MAX_PANEL_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    labels = [list(series) for _, series in panels]
    for index, (axis, (title, series)) in enumerate(zip(axes.flat, panels)):
        if index > 0:
            axis.sharex(axes.flat[0])
        # One legend per run of panels with the same lines, on the last of them.
        legend = len(series) > 1 and labels[index + 1 : index + 2] != [labels[index]]
        _draw(axis, title, series, xlabel=xlabel, log=title in logy, legend=legend)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _draw(axis, title: str, series: dict, *, xlabel: str, log: bool, legend: bool) -> None:
    for label, (xs, ys) in series.items():
        axis.plot(xs, ys, marker="o" if len(xs) < MARKERS_BELOW else None, label=label)
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    if log:
        axis.set_yscale("log")
    if legend:
        axis.legend(fontsize=7)
