"""Server-side SVG line charts for the dashboards: axes, grid, one polyline per run of
consecutive values (a day without data breaks the line), a marker per point, a legend.
No JavaScript. Accessible: role="img" with <title> and <desc>; every page that shows a
chart also shows its numbers in a table."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 520, 210
LEFT, RIGHT, TOP, BOTTOM = 60, 16, 12, 38
# Colour and dash both tell the lines apart (never colour alone).
STYLES = (("#2563eb", ""), ("#d97706", "6 4"), ("#059669", "2 3"), ("#7c3aed", "10 3 2 3"))


@dataclass(frozen=True)
class Line:
    name: str
    values: Sequence[float | None]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering low..high (1, 2, 2.5 or 5 × a power of ten apart)."""
    if high <= low:
        high = low + 1
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _number(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == int(value):
        return str(int(value))
    return f"{value:.3g}"


def line_chart(
    *,
    chart_id: str,
    title: str,
    desc: str,
    days: Sequence[date],
    lines: Sequence[Line],
    fmt: Callable[[float], str] = _number,
    y_min: float | None = 0.0,
    y_max: float | None = None,
) -> SafeString:
    """An SVG line chart of `lines` over `days` (each line has one value or None per day)."""
    present = [v for line in lines for v in line.values if v is not None]
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-labelledby="{escape(chart_id)}-title '
        f'{escape(chart_id)}-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>',
    ]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    if not present or not days:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="chart-empty">'
            "No data in this range</text></svg>"
        )
        return mark_safe("".join(parts))
    low = min(present) if y_min is None else min(y_min, min(present))
    high = max(present) if y_max is None else max(y_max, max(present))
    ticks = nice_ticks(low, high if high > low else low + 1)
    low, high = ticks[0], ticks[-1]
    span = high - low or 1.0
    n = len(days)

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(value: float) -> float:
        return TOP + plot_h - (value - low) / span * plot_h

    parts.append('<g class="chart-grid" aria-hidden="true">')
    for tick in ticks:
        ty = y(tick)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}" '
            'stroke="#e5e7eb"/>'
            f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end" font-size="12">'
            f"{escape(fmt(tick))}</text>"
        )
    label_every = max(1, math.ceil(n / 6))
    for i, day in enumerate(days):
        if i % label_every == 0 or i == n - 1:
            anchor = "end" if i == n - 1 and n > 1 else "start" if i == 0 else "middle"
            parts.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="{anchor}" '
                f'font-size="12">{day:%m-%d}</text>'
            )
    parts.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#6b7280"/>'
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" '
        'stroke="#6b7280"/></g>'
    )
    for number, line in enumerate(lines):
        colour, dash = STYLES[number % len(STYLES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<g class="chart-line" data-name="{escape(line.name)}">')
        run: list[str] = []
        for i, value in enumerate([*line.values, None]):
            if value is not None:
                run.append(f"{x(i):.1f},{y(value):.1f}")
                continue
            if len(run) > 1:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash_attr} '
                    f'points="{" ".join(run)}"/>'
                )
            run = []
        for i, value in enumerate(line.values):
            if value is not None:
                parts.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(value):.1f}" r="2.5" fill="{colour}">'
                    f"<title>{escape(line.name)} {days[i]:%Y-%m-%d}: {escape(fmt(value))}"
                    "</title></circle>"
                )
        parts.append("</g>")
    legend_x = LEFT
    for number, line in enumerate(lines):
        colour, dash = STYLES[number % len(STYLES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="{HEIGHT - 6}" y2="{HEIGHT - 6}" '
            f'stroke="{colour}" stroke-width="2"{dash_attr}/>'
            f'<text x="{legend_x + 26}" y="{HEIGHT - 2}" font-size="12">{escape(line.name)}</text>'
        )
        legend_x += 34 + 7 * len(line.name)
    parts.append("</svg>")
    return mark_safe("".join(parts))
