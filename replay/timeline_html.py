"""A timeline as one self-contained HTML page: the work on a time axis (`replay.timeline_gantt`:
a bar per workflow, step, task, model and tool call, connected to its cause), a sequence diagram
(inline SVG, one lane per agent, one arrow per hop, labelled with what happened) and a table of
every hop with the causal tree drawn. No scripts, fonts or files from elsewhere.
`render_fragment` is the same without the page around it, for embedding."""

from __future__ import annotations

from replay.labels import clip
from replay.timeline import Hop, Timeline
from replay.timeline_gantt import render_gantt
from topics.base import html_text

__all__ = ["STYLE", "render_fragment", "render_html"]

LANE = 200  # px between lanes
ROW = 26  # px between hops
TOP = 70  # px above the first hop
GUTTER = 120  # px for the seq and offset of each hop, left of the lanes
LEFT = GUTTER + LANE // 2  # x of the first lane
MAX_GUIDES = 40  # levels of the tree drawn beside a hop; a deeper one says how many more there are
MAX_ARROWS = 2000  # messages the sequence diagram draws at most (the first, in time order)
MAX_ROWS = 10_000  # events the table lists at most (the page of 300,000 events was 234 MiB)
MAX_LANES = 50  # agents the sequence diagram gives a lane each; the rest share the last one ("others")
OTHERS = "(other agents)"

# The page's CSS; a page that embeds `render_fragment` includes it in its own <style>.
STYLE = """
body{font:13px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1d2433}
h1{font-size:18px;margin:0 0 4px} .meta{color:#5b6478;margin-bottom:16px}
svg{background:#fbfcfe;border:1px solid #dde2ec;border-radius:6px}
.lane{stroke:#b8c1d3;stroke-dasharray:4 4} .head{fill:#e8eefb;stroke:#7d93c7}
.head-text{font-weight:600;font-size:12px;text-anchor:middle}
.hop line,.hop path{stroke:#3358c4;stroke-width:1.4;fill:none}
.hop.outcome line,.hop.outcome path{stroke:#1c8a4a} .hop.failed line,.hop.failed path{stroke:#c0392b}
.hop.llm line,.hop.llm path{stroke:#8a4fc4}
.hop text{font-size:11px;fill:#1d2433} .seq{font-size:11px;fill:#5b6478;text-anchor:end}
table{border-collapse:collapse;margin-top:20px;width:100%} th,td{border-bottom:1px solid #e3e7ef;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f5fa} td.num{text-align:right;font-variant-numeric:tabular-nums} code{font-size:12px}
h2{font-size:15px;margin:22px 0 6px} .tree{font-family:ui-monospace,Menlo,Consolas,monospace;color:#8a93a6;white-space:pre}
.legend{display:flex;gap:16px;flex-wrap:wrap;color:#5b6478;margin:4px 0 8px} .legend span{display:inline-flex;align-items:center;gap:5px}
.swatch{display:inline-block;width:22px;height:10px;border-radius:2px}
.swatch.waiting{background:repeating-linear-gradient(45deg,#eef1f7 0 3px,#9aa6bf 3px 5px)} .swatch.running{background:#3358c4}
.swatch.llm{background:#8a4fc4} .swatch.failed{background:#c0392b} .swatch.retry{background:#e67e22;width:4px}
.swatch.cause{background:none;border-left:1.5px solid #8a93a6;border-bottom:1.5px solid #8a93a6;width:12px;height:8px;border-radius:0}
.gantt .grid{stroke:#e3e7ef} .gantt .baseline{stroke:#8a93a6} .gantt .tick{font-size:10px;fill:#5b6478;text-anchor:middle}
.gantt .bar-label{font-size:11px;fill:#1d2433} .gantt .bar.step .bar-label,.gantt .bar.workflow .bar-label{font-weight:600}
.gantt .seg.running{fill:#3358c4} .gantt .seg.waiting{fill:url(#waiting);stroke:#9aa6bf;stroke-width:.6}
.gantt .workflow .seg.running{fill:#1d2433} .gantt .step .seg.running{fill:#5a7bd8} .gantt .llm .seg.running{fill:#8a4fc4}
.gantt .tool .seg.running{fill:#2a9d8f} .gantt .completed .seg.running{opacity:.92}
.gantt .failed .seg.running{fill:#c0392b} .gantt .cancelled .seg.running{fill:#9aa0aa} .gantt .open .seg{opacity:.55}
.gantt .cause{stroke:#8a93a6;stroke-width:1;fill:none;stroke-dasharray:3 2} .gantt .mark{fill:#fff;stroke:#1d2433;stroke-width:1}
.gantt .mark.failed{fill:#c0392b;stroke:#c0392b} .gantt .retry line{stroke:#e67e22;stroke-width:2.5} .gantt .retry path{fill:#e67e22}
.gantt .note{font-size:10.5px;fill:#5b6478} .gantt .retry-label{fill:#b35900;font-weight:600}
.gantt .outcome.failed{fill:#c0392b;font-weight:600} .gantt .outcome.handed_off,.gantt .outcome.cancelled,.gantt .outcome.open{fill:#7a5c00}
.gantt .more{font-size:11px;fill:#5b6478}
"""

_LEGEND = (
    '<div class="legend"><span><i class="swatch waiting"></i>waiting (requested, not yet picked up)</span>'
    '<span><i class="swatch running"></i>running</span><span><i class="swatch llm"></i>model call</span>'
    '<span><i class="swatch failed"></i>failed, with its reason</span>'
    '<span><i class="swatch retry"></i>retry, with the reason of the attempt before</span>'
    '<span><i class="swatch cause"></i>caused by</span></div>'
)


def render_html(timeline: Timeline) -> str:
    """The page for ``timeline``; write it to a file and open it in any browser."""
    title = f"timeline of {timeline.root}"
    meta = (
        f"{len(timeline.hops)} hops, {len(timeline.agents)} agents, {timeline.duration:.3f} s"
        f" from {timeline.start or '-'}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html_text(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{html_text(title)}</h1><div class="meta">{html_text(meta)}</div>'
        f"{render_fragment(timeline)}</body></html>\n"
    )


def render_fragment(timeline: Timeline) -> str:
    """The chart, diagram and table without the page (its style is `STYLE`), to embed in another page."""
    return (
        f'<section class="timeline"><h2>Work over time</h2>{_LEGEND}{render_gantt(timeline.bars, timeline.duration)}'
        f"<h2>Messages between agents</h2>{_diagram(timeline)}<h2>Events</h2>{_table(timeline)}</section>"
    )


def _lanes(agents: list[str], hops: list[Hop]) -> tuple[dict[str, int], dict[str, int]]:
    """The lanes (heading -> x) of the agents of the drawn ``hops``, in ``agents``' order, at
    most `MAX_LANES`: past that the rest share the last one, `OTHERS` (an event's `source` is
    any text its publisher chose: 50,000 of them made a diagram 10 million px wide); and where
    each of those agents is drawn (agent -> x)."""
    drawn = {name for hop in hops for name in (hop.agent, hop.to_agent)}
    named = [agent for agent in agents if agent in drawn]
    shown = named if len(named) <= MAX_LANES else [*named[: MAX_LANES - 1], OTHERS]
    heads = {agent: LEFT + n * LANE for n, agent in enumerate(shown)}
    return heads, {agent: heads.get(agent, heads.get(OTHERS, LEFT)) for agent in named}


def _diagram(timeline: Timeline) -> str:
    every = timeline.in_time_order()
    hops = every[:MAX_ARROWS]
    heads, lanes = _lanes(timeline.agents, hops)
    width = GUTTER + max(len(heads), 1) * LANE + 180  # room for the labels of self-arrows on the last lane
    height = TOP + (len(hops) + 1) * ROW
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="sequence diagram">'
        ),
        (
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="context-stroke"/></marker></defs>'
        ),
    ]
    for agent, x in heads.items():
        parts.append(f'<line class="lane" x1="{x}" y1="{TOP - 30}" x2="{x}" y2="{height - 8}"/>')
        parts.append(f'<rect class="head" x="{x - LANE // 2 + 8}" y="8" width="{LANE - 16}" height="28" rx="4"/>')
        parts.append(f'<text class="head-text" x="{x}" y="27">{html_text(_clip(agent, 28))}</text>')
    for n, hop in enumerate(hops):
        parts.append(_arrow(hop, lanes, TOP + n * ROW))
    parts.append("</svg>")
    return "".join(parts) + _not_shown(len(every) - len(hops), "messages not drawn", MAX_ARROWS)


def _not_shown(count: int, what: str, limit: int) -> str:
    """The note under a bounded part of the page, when it left something out."""
    if count <= 0:
        return ""
    return (f'<p class="meta">{count:,} more {what} (at most {limit:,}): `mesh replay timeline ID` '
            "prints every event as text</p>")  # fmt: skip


def _arrow(hop: Hop, lanes: dict[str, int], y: int) -> str:
    x1 = lanes[hop.agent]
    x2 = lanes.get(hop.to_agent, x1)
    kind = _kind(hop)
    label = html_text(clip(hop.label or hop.summary, 44))
    tip = html_text(
        f"#{hop.seq} {hop.type} on {hop.subject}\n{hop.agent} → {hop.to_agent}\n+{hop.offset:.3f}s {hop.label or hop.summary}"
    )
    if x1 == x2:
        shape = f'<path d="M{x1},{y - 6} h28 v12 h-26" marker-end="url(#arrow)"/>'
        text_x = x1 + 34
    else:
        shape = f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" marker-end="url(#arrow)"/>'
        text_x = min(x1, x2) + 6
    return (
        f'<g class="hop {kind}" data-seq="{hop.seq}" data-id="{html_text(hop.id)}" data-type="{html_text(hop.type)}">'
        f"<title>{tip}</title>"
        f'<text class="seq" x="{GUTTER - 8}" y="{y + 4}">#{hop.seq} +{hop.offset:.3f}s</text>'
        f'{shape}<text x="{text_x}" y="{y - 4}">{label}</text></g>'
    )


def _kind(hop: Hop) -> str:
    if hop.type == "mesh.task.completed":
        return "outcome"
    if hop.type in ("mesh.task.failed", "mesh.dead.lettered"):
        return "failed"
    return "llm" if hop.type == "mesh.llm.called" else "event"


def _table(timeline: Timeline) -> str:
    rows = []
    listed = timeline.hops[:MAX_ROWS]
    for hop, guide in zip(listed, tree_guides(listed), strict=True):
        inferred = ' title="cause inferred: recorded without one"' if hop.cause_inferred else ""
        rows.append(
            f'<tr class="hop-row" data-seq="{hop.seq}"><td class="num">#{hop.seq}</td>'
            f'<td class="num">+{hop.offset:.3f}s</td><td>{html_text(hop.agent)} → {html_text(hop.to_agent)}</td>'
            f'<td><span class="tree"{inferred}>{html_text(guide)}</span><code>{html_text(hop.type)}</code></td>'
            f"<td>{html_text(hop.label or hop.summary)}</td><td><code>{html_text(hop.subject)}</code></td>"
            f'<td class="num">{_secs(hop.to_children)}</td>'
            f'<td class="num">{_secs(hop.to_outcome)}</td><td><code>{html_text(hop.id)}</code></td></tr>'
        )
    head = (
        "<tr><th>seq</th><th>offset</th><th>hop</th><th>cause tree and type</th><th>what</th><th>subject</th>"
        "<th>to last effect</th><th>to outcome</th><th>event id</th></tr>"
    )
    return (f'<table id="hops"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
            + _not_shown(len(timeline.hops) - len(listed), "events not listed", MAX_ROWS))  # fmt: skip


def tree_guides(hops: list[Hop]) -> list[str]:
    """For hops in tree order, the lines that draw the tree: `├─ `, `└─ ` and `│  ` under open branches."""
    last_child = {hop.parent: hop.id for hop in hops}
    guides: list[str] = []
    open_branches: list[bool] = []  # per level above: does that ancestor have siblings still to come?
    for hop in hops:
        if hop.depth == 0 or hop.parent is None:
            guides.append("")
            open_branches = []
            continue
        last = last_child.get(hop.parent) == hop.id
        above = open_branches[: hop.depth - 1]
        above += [False] * (hop.depth - 1 - len(above))
        drawn = "".join("│  " if more else "   " for more in above[-MAX_GUIDES:])  # the deepest levels of a long chain
        skipped = f"…{len(above) - MAX_GUIDES} " if len(above) > MAX_GUIDES else ""
        guides.append(skipped + drawn + ("└─ " if last else "├─ "))
        open_branches = [*above, not last]
    return guides


def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.3f} s"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
