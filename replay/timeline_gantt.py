"""A timeline's bars (`replay.bars`) as inline SVG on a time axis: one row per workflow, step,
task, model and tool call, x proportional to time, ticks in ms or s. A task's waiting is
hatched, its running solid; failures are red with their reason written next to the bar; a
retry is an orange marker on the bar, its reason written next to it; a connector runs from
the moment and row of each bar's cause to the bar's start. The arithmetic (`Scale`, `ticks`)
is separate from the drawing so it can be tested on its own."""

from __future__ import annotations

import math

import msgspec

from replay.bars import Bar, Retry
from replay.labels import clip
from topics.base import html_text

__all__ = ["MAX_BARS", "Scale", "render_gantt", "tick_label", "ticks"]

MAX_BARS = 2000  # rows drawn at most; the table below the chart lists up to `timeline_html.MAX_ROWS` events
GUTTER = 330  # px of labels, left of the axis
CHART = 860  # px of the time axis
NOTES = 480  # px right of the axis for outcomes and reasons
ROW = 24  # px per bar
TOP = 44  # px above the first bar (the axis)
BAR = 14  # px height of a bar
INDENT = 14  # px per level of the tree in the labels
MIN_WIDTH = 2.0  # px: an instant (a tool call) is still visible
NOTE_CHARS = 80  # characters of an outcome or reason written next to a bar; all of it in the tooltip


class Scale(msgspec.Struct, frozen=True):
    """Seconds since the start of the timeline to px: ``left`` + ``width`` * t / ``span``."""

    span: float
    left: float = GUTTER
    width: float = CHART

    def x(self, seconds: float) -> float:
        return self.left + (self.width * min(max(seconds, 0.0), self.span) / self.span if self.span > 0 else 0.0)

    def extent(self, start: float, end: float) -> tuple[float, float]:
        """The x and width of a bar from ``start`` to ``end``; at least MIN_WIDTH wide."""
        x = self.x(start)
        return x, max(self.x(end) - x, MIN_WIDTH)


def ticks(span: float, most: int = 10) -> list[float]:
    """Evenly spaced tick times from 0 to at most ``span``, at a step of 1, 2 or 5 times a power of ten, at most ``most``+1."""
    if span <= 0:
        return [0.0]
    raw = span / most
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    count = math.floor(span / step + 1e-9)
    return [round(n * step, 9) for n in range(count + 1)]


def tick_label(seconds: float, step: float) -> str:
    """`0`, `250 ms`, `2.5 ms`, `1.2 s`: milliseconds below a second, seconds from there, with
    as many decimals as the step needs."""
    if seconds == 0:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:.{_decimals(step * 1000)}f} ms"
    return f"{seconds:.{_decimals(step)}f} s"


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


def render_gantt(bars: list[Bar], span: float) -> str:
    """The SVG of ``bars`` (tree order) over ``span`` seconds."""
    shown = bars[:MAX_BARS]
    scale = Scale(span=max([span, *(b.end or b.start for b in shown)]))
    rows = {bar.id: n for n, bar in enumerate(shown)}
    height = TOP + len(shown) * ROW + 16
    width = GUTTER + CHART + NOTES
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gantt" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="work on a time axis">',
        '<defs><pattern id="waiting" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<rect width="6" height="6" fill="#eef1f7"/><line x1="0" y1="0" x2="0" y2="6" stroke="#9aa6bf" stroke-width="2"/>'
        "</pattern></defs>",
        _axis(scale, height),
    ]
    parts += [_connector(bar, rows, scale) for bar in shown if bar.parent in rows]
    parts += [_bar(bar, n, scale) for n, bar in enumerate(shown)]
    if len(bars) > len(shown):
        parts.append(f'<text class="more" x="8" y="{height - 4}">{len(bars) - len(shown)} more bars not drawn</text>')
    parts.append("</svg>")
    return "".join(parts)


def _axis(scale: Scale, height: int) -> str:
    marks = ticks(scale.span)
    step = marks[1] if len(marks) > 1 else 1.0
    parts = ['<g class="axis">']
    for at in marks:
        x = f"{scale.x(at):.1f}"
        parts.append(
            f'<line class="grid" x1="{x}" y1="{TOP - 8}" x2="{x}" y2="{height - 12}"/>'
            f'<text class="tick" data-t="{at:g}" x="{x}" y="{TOP - 14}">{html_text(tick_label(at, step))}</text>'
        )
    parts.append(
        f'<line class="baseline" x1="{scale.left}" y1="{TOP - 8}" x2="{scale.left + scale.width}" y2="{TOP - 8}"/>'
    )
    return "".join(parts) + "</g>"


def _y(row: int) -> float:
    return TOP + row * ROW + ROW / 2


def _connector(bar: Bar, rows: dict[str, int], scale: Scale) -> str:
    """An elbow from the cause (its moment, on its bar's row) down to this bar's start."""
    x0, y0 = scale.x(bar.cause_at or 0.0), _y(rows[bar.parent or ""]) + BAR / 2
    x1, y1 = scale.x(bar.start), _y(rows[bar.id])
    return (
        f'<path class="cause" data-from="{html_text(bar.parent or "")}" data-to="{html_text(bar.id)}" '
        f'd="M{x0:.1f},{y0:.1f} V{y1:.1f} H{max(x1, x0):.1f}"/>'
    )


def _bar(bar: Bar, row: int, scale: Scale) -> str:
    y = _y(row)
    top = y - BAR / 2
    end = bar.end if bar.end is not None else scale.span
    x, w = scale.extent(bar.start, end)
    tip = _tooltip(bar)
    label_x = 8 + min(bar.depth, 12) * INDENT
    parts = [
        f'<g class="bar {bar.kind} {bar.status}" data-id="{html_text(bar.id)}" data-kind="{bar.kind}" '
        f'data-status="{bar.status}" data-start="{bar.start:.6f}" data-end="{end:.6f}" data-x="{x:.2f}" '
        f'data-width="{w:.2f}" data-depth="{bar.depth}" data-parent="{html_text(bar.parent or "")}">',
        f"<title>{html_text(tip)}</title>",
        f'<text class="bar-label" x="{label_x}" y="{y + 4:.1f}">{html_text(clip(bar.label, 44 - min(bar.depth, 12) * 2))}</text>',
    ]
    for segment in bar.segments:
        sx, sw = scale.extent(segment.start, segment.end)
        parts.append(
            f'<rect class="seg {segment.state}" x="{sx:.1f}" y="{top:.1f}" width="{sw:.1f}" height="{BAR}" rx="2"/>'
        )
    for mark in bar.marks:
        css = "mark failed" if mark.failed else "mark"
        parts.append(f'<circle class="{css}" data-seq="{mark.seq}" cx="{scale.x(mark.at):.1f}" cy="{y:.1f}" r="3">'
                     f"<title>{html_text(f'#{mark.seq} {mark.label}')}</title></circle>")  # fmt: skip
    parts += [_retry(retry, scale.x(retry.at), top) for retry in bar.retries]
    parts.append(_note(bar, x + w + 6, y, end))
    return "".join(parts) + "</g>"


def _retry(retry: Retry, x: float, top: float) -> str:
    reason = _why(retry)
    return (
        f'<g class="retry" data-attempt="{retry.attempt}"><title>{html_text(f"retry: attempt {retry.attempt} {reason}")}</title>'
        f'<line x1="{x:.1f}" y1="{top - 3:.1f}" x2="{x:.1f}" y2="{top + BAR + 3:.1f}"/>'
        f'<path d="M{x - 4:.1f},{top - 5:.1f} h8 l-4,5 z"/></g>'
    )


def _why(retry: Retry) -> str:
    return f"after {retry.reason}" if retry.reason else "(the log records no reason)"


def _note(bar: Bar, x: float, y: float, end: float) -> str:
    """What is written right of a bar: its duration, its retries with their reasons, why it failed."""
    parts = [f'<text class="note" x="{x:.1f}" y="{y + 4:.1f}">']
    spent = duration(end - bar.start) + (" so far" if bar.end is None else "")
    parts.append(f"<tspan>{html_text(spent)}</tspan>")
    for retry in bar.retries:
        text = f"↻ attempt {retry.attempt} {_why(retry)}"
        parts.append(f'<tspan class="retry-label"> {html_text(clip(text, NOTE_CHARS))}</tspan>')
    if bar.status in ("failed", "cancelled", "handed_off"):
        verb = {"failed": "✗ failed", "cancelled": "cancelled", "handed_off": "handed off"}[bar.status]
        text = f"{verb}: {bar.reason}" if bar.reason and bar.status != "handed_off" else f"{verb} {bar.reason}"
        parts.append(f'<tspan class="outcome {bar.status}"> {html_text(clip(text, NOTE_CHARS))}</tspan>')
    elif bar.status == "open":
        parts.append('<tspan class="outcome open"> no outcome in the log</tspan>')
    return "".join(parts) + "</text>"


def _tooltip(bar: Bar) -> str:
    lines = [bar.label, f"{bar.kind} by {bar.agent}, +{bar.start:.3f}s"]
    if bar.end is not None:
        lines.append(f"{bar.status} at +{bar.end:.3f}s after {duration(bar.end - bar.start)}")
    waited = sum(s.end - s.start for s in bar.segments if s.state == "waiting")
    if waited:
        lines.append(f"waiting {duration(waited)} in all")
    lines += [f"retry: attempt {r.attempt} at +{r.at:.3f}s {_why(r)}" for r in bar.retries]
    if bar.reason:
        lines.append(f"reason: {bar.reason}")
    return "\n".join(lines)
