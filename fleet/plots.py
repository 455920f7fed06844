"""Plots of the fleet view as inline SVG, drawn on the server: no script, no asset from
anywhere else. Pure functions of their data; every text they put in is escaped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape

from fleet.queries import Point, Segment

STATE_COLOURS = {"off": "#b0b7c3", "idle": "#f2b134", "running": "#2f9e44",
                 "overload": "#d6336c"}


def _x(moment: dt.datetime, start: dt.datetime, end: dt.datetime, width: float) -> float:
    span = (end - start).total_seconds() or 1.0
    return (moment - start).total_seconds() / span * width


def state_timeline(segments: Sequence[Segment], start: dt.datetime, end: dt.datetime,
                   width: int = 900, height: int = 28) -> str:
    """One bar, a coloured stretch per state; each stretch's title says state and times."""
    parts = [(f'<svg class="timeline" viewBox="0 0 {width} {height}" width="100%" '
              f'role="img" aria-label="machine states">')]
    for seg in segments:
        x0, x1 = _x(seg.start, start, end, width), _x(seg.end, start, end, width)
        colour = STATE_COLOURS.get(seg.state, "#868e96")
        title = escape(f"{seg.state} {seg.start:%Y-%m-%d %H:%M:%S} - {seg.end:%H:%M:%S} UTC")
        parts.append(f'<rect x="{x0:.2f}" y="0" width="{max(x1 - x0, 0.5):.2f}" '
                     f'height="{height}" fill="{colour}" data-state="{escape(seg.state)}">'
                     f"<title>{title}</title></rect>")
    parts.append("</svg>")
    return "".join(parts)


def series_plot(points: Sequence[Point], start: dt.datetime, end: dt.datetime, unit: str,
                width: int = 900, height: int = 240) -> str:
    """The windows' mean as a line over the band from their min to their max."""
    if not points:
        return '<p class="empty">no windows of this tag in the span</p>'
    low = min(p.low for p in points)
    high = max(p.high for p in points)
    pad = (high - low) * 0.05 or 1.0
    low, high = low - pad, high + pad
    left, bottom = 60, 20

    def y(value: float) -> float:
        return (high - value) / (high - low) * (height - bottom)

    def x(moment: dt.datetime) -> float:
        return left + _x(moment, start, end, width - left)

    band = " ".join(f"{x(p.time):.1f},{y(p.high):.1f}" for p in points)
    band += " " + " ".join(f"{x(p.time):.1f},{y(p.low):.1f}" for p in reversed(points))
    line = " ".join(f"{x(p.time):.1f},{y(p.mean):.1f}" for p in points)
    ticks = "".join(
        f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.4g}</text>'
        f'<line x1="{left}" x2="{width}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
        for v in (low + pad, (low + high) / 2, high - pad))
    label = escape(unit)
    return (f'<svg class="series" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-label="window mean, min and max">{ticks}'
            f'<polygon points="{band}" class="band"/><polyline points="{line}" class="mean"/>'
            f'<text x="{left}" y="{height - 4}">{start:%Y-%m-%d %H:%M} UTC</text>'
            f'<text x="{width}" y="{height - 4}" text-anchor="end">{end:%Y-%m-%d %H:%M}</text>'
            f'<text x="4" y="12">{label}</text></svg>')
