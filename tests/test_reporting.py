"""wvq_kernels.reporting: the one table format and the one line-plot helper."""

import pytest

from wvq_kernels.reporting import Column, format_table, line_plots

COLUMNS = [
    Column("name", "name", 6, left=True),
    Column("value", "value", 7, "{:.2f}"),
]


def test_format_table_aligns_cells_under_a_dashed_rule():
    table = format_table(COLUMNS, [{"name": "a", "value": 1.5}, {"name": "bb", "value": 10}])
    assert table.splitlines() == [
        "name     value",
        "--------------",
        "a         1.50",
        "bb       10.00",
    ]


def test_format_table_prints_none_as_a_dash():
    assert (
        format_table(COLUMNS, [{"name": "a", "value": None}]).splitlines()[-1] == "a            -"
    )


def test_format_table_separates_groups_by_a_blank_line():
    rows = [{"name": n, "value": 0.0} for n in ("a", "a", "b")]
    lines = format_table(COLUMNS, rows, group=lambda row: row["name"]).splitlines()
    assert lines[2:] == ["a         0.00", "a         0.00", "", "b         0.00"]


def test_line_plots_writes_one_png(tmp_path):
    pytest.importorskip("matplotlib")
    panels = [("loss", {"run": ([1, 2, 3], [3.0, 2.0, 1.0])}), ("U", {"run": ([1, 2], [0.1, 0.2])})]
    path = line_plots(tmp_path / "plot.png", panels, logy=("loss",))
    assert path == tmp_path / "plot.png" and path.stat().st_size > 0
