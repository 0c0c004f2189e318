"""Metaflow card components built from plain Python data, so the flow file stays declarative."""

from __future__ import annotations

from collections.abc import Iterable

from metaflow.cards import Markdown, Table, VegaChart


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def table(rows: list[dict[str, object]], columns: list[str] | None = None) -> Table:
    """A table from a list of dicts (one per row); ``columns`` chooses and orders the keys.

    By default the columns are every row's keys in order of first appearance, not the first row's only:
    rows may differ (the sources card has one row per source, each with its own hyperparameters), and a key
    that only a later row has would otherwise never be shown. A row without a column's key shows "—".
    """
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    return Table(data=[[_cell(r.get(c)) for c in columns] for r in rows], headers=columns)


def key_values(values: dict[str, object]) -> Table:
    """A two-column table of settings or statistics."""
    return Table(data=[[k, _cell(v)] for k, v in values.items()], headers=["name", "value"])


def line_chart(rows: list[dict[str, object]], x: str, y: str, title: str, color: str | None = None) -> VegaChart:
    """A Vega-Lite line chart (e.g. loss per epoch, one line per ``color`` value)."""
    encoding: dict[str, object] = {
        "x": {"field": x, "type": "quantitative"},
        "y": {"field": y, "type": "quantitative", "scale": {"zero": False}},
    }
    if color:
        encoding["color"] = {"field": color, "type": "nominal"}
    return VegaChart({
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title, "width": 500, "height": 250,
        "data": {"values": rows}, "mark": {"type": "line", "point": True}, "encoding": encoding,
    })


def bar_chart(rows: list[dict[str, object]], x: str, y: str, title: str) -> VegaChart:
    """A Vega-Lite bar chart (e.g. the rating distribution)."""
    return VegaChart({
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title, "width": 400, "height": 200, "data": {"values": rows}, "mark": "bar",
        "encoding": {"x": {"field": x, "type": "ordinal"}, "y": {"field": y, "type": "quantitative"}},
    })


def heading(text: str, lines: Iterable[str] = ()) -> Markdown:
    return Markdown("\n\n".join([f"## {text}", *lines]))
