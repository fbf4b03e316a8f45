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
    None when matplotlib is missing. Panels whose title is in ``logy`` get a log y-axis."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    columns = min(MAX_PANEL_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    previous_labels = None
    for axis, (title, series) in zip(axes.flat, panels):
        for label, (xs, ys) in series.items():
            axis.plot(xs, ys, label=label)
        axis.set_title(title)
        axis.set_xlabel(xlabel)
        if title in logy:
            axis.set_yscale("log")
        # One legend per distinct set of lines: panels that repeat the previous labels omit it.
        if len(series) > 1 and list(series) != previous_labels:
            axis.legend(fontsize=7)
        previous_labels = list(series)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
