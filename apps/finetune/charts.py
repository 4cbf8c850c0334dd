"""The loss chart of a fine-tune job, drawn on the server as SVG like the feedback
dashboards' charts (`apps.feedback.charts`, whose tick rule and line styles it shares):
axes with step and loss ticks, the raw loss, the smoothed loss, the eval loss with a
marker per evaluation, and a dashed vertical marker at each checkpoint. No JavaScript;
role="img" with a <title> and a <desc> that say what the numbers are."""

from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from apps.feedback.charts import nice_ticks

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 12, 52
LOSS, SMOOTHED, EVAL, CHECKPOINT = "#9ca3af", "#2563eb", "#c2410c", "#6b7280"


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) and abs(value) >= 1 else f"{value:.3g}"


def loss_chart(
    *,
    points: Sequence[Sequence[float | None]],
    total_steps: int | None,
    checkpoint_every: int | None,
    chart_id: str = "loss-chart",
) -> SafeString:
    """The chart of `points` ([step, loss, smoothed loss, eval loss or None], as the job
    stores them), its step axis running to `total_steps` when known; "" without points."""
    rows = [p for p in points if p and p[1] is not None]
    if not rows:
        return mark_safe("")
    values = [v for p in rows for v in p[1:4] if v is not None]
    ticks = nice_ticks(min(values), max(values) if max(values) > min(values) else min(values) + 1)
    low, high = ticks[0], ticks[-1]
    last = max(int(total_steps or 0), int(rows[-1][0]), 1)
    step_ticks = [t for t in nice_ticks(0, last) if t <= last]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    evals = [p for p in rows if len(p) > 3 and p[3] is not None]

    def x(step: float) -> float:
        return LEFT + plot_w * step / last

    def y(value: float) -> float:
        return TOP + plot_h - (value - low) / ((high - low) or 1.0) * plot_h

    title = f"Training loss by step (steps 0 to {last})"
    desc = (
        f"{len(rows)} points from step {int(rows[0][0])} to {int(rows[-1][0])}; loss from "
        f"{_fmt(min(values))} to {_fmt(max(values))}; {len(evals)} eval point"
        f"{'s' if len(evals) != 1 else ''}"
        + (f"; a checkpoint every {checkpoint_every} steps." if checkpoint_every else ".")
    )
    parts = [
        f'<svg class="chart loss-chart" id="{chart_id}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<desc id="{chart_id}-desc">{escape(desc)}</desc>',
        '<g class="chart-grid" aria-hidden="true">',
    ]
    for tick in ticks:
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            'stroke="#e5e7eb"/>'
            f'<text class="y-tick" x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" '
            f'font-size="12">{escape(_fmt(tick))}</text>'
        )
    for tick in step_ticks:
        parts.append(
            f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{TOP + plot_h}" '
            f'y2="{TOP + plot_h + 4}" stroke="{CHECKPOINT}"/>'
            f'<text class="x-tick" x="{x(tick):.1f}" y="{TOP + plot_h + 17}" '
            f'text-anchor="middle" font-size="12">{escape(_fmt(tick))}</text>'
        )
    parts.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="{CHECKPOINT}"/>'
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" '
        f'stroke="{CHECKPOINT}"/>'
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h + 32}" text-anchor="middle" '
        'font-size="12">step</text>'
        f'<text x="14" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2:.1f})">loss</text></g>'
    )
    if checkpoint_every:
        done = int(rows[-1][0])
        parts.append('<g class="checkpoints">')
        for step in range(checkpoint_every, min(done, last - 1) + 1, checkpoint_every):
            parts.append(
                f'<line class="checkpoint" x1="{x(step):.1f}" x2="{x(step):.1f}" y1="{TOP}" '
                f'y2="{TOP + plot_h}" stroke="{CHECKPOINT}" stroke-dasharray="2 4">'
                f"<title>checkpoint at step {step}</title></line>"
            )
        parts.append("</g>")

    def polyline(column: int, colour: str, width: int, dash: str = "") -> None:
        coords = [f"{x(p[0]):.1f},{y(p[column]):.1f}" for p in rows if p[column] is not None]
        if len(coords) > 1:
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="{width}"{dash_attr} '
                f'points="{" ".join(coords)}"/>'
            )

    polyline(1, LOSS, 1)
    polyline(2, SMOOTHED, 2)
    parts.append('<g class="eval-points">')
    if len(evals) > 1:
        coords = " ".join(f"{x(p[0]):.1f},{y(p[3]):.1f}" for p in evals)
        parts.append(
            f'<polyline fill="none" stroke="{EVAL}" stroke-width="2" stroke-dasharray="6 4" '
            f'points="{coords}"/>'
        )
    for p in evals:
        parts.append(
            f'<circle class="eval-point" cx="{x(p[0]):.1f}" cy="{y(p[3]):.1f}" r="3.5" '
            f'fill="{EVAL}"><title>eval loss at step {int(p[0])}: {p[3]:.4f}</title></circle>'
        )
    parts.append("</g>")
    legend = [("loss", LOSS, ""), ("smoothed", SMOOTHED, ""), ("eval", EVAL, "6 4")]
    if checkpoint_every:
        legend.append(("checkpoint", CHECKPOINT, "2 4"))
    legend_x = LEFT
    for name, colour, dash in legend:
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="{HEIGHT - 6}" y2="{HEIGHT - 6}" '
            f'stroke="{colour}" stroke-width="2"{dash_attr}/>'
            f'<text x="{legend_x + 26}" y="{HEIGHT - 2}" font-size="12">{name}</text>'
        )
        legend_x += 40 + 7 * len(name)
    parts.append("</svg>")
    return mark_safe("".join(parts))
