"""The HTML every console page shares: the frame (navigation, what the index holds), tables,
pagers and filter forms. Every value from the log is escaped here or by the caller with `e`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import msgspec

from mesh.projections import instant
from topics.base import html_text

__all__ = ["PER_PAGE", "Page", "ago", "e", "frame", "link", "pager", "pretty", "table"]

PER_PAGE = 50  # rows per page of every table

NAV = (
    ("agents", "/agents", "Agents"),
    ("capabilities", "/capabilities", "Capabilities"),
    ("tasks", "/tasks", "Tasks"),
    ("workflows", "/workflows", "Workflows"),
    ("events", "/events", "Events"),
    ("projections", "/projections", "Projections"),
    ("dead", "/dead", "Dead letters"),
)

_json = msgspec.json.Encoder()


class Page(msgspec.Struct, kw_only=True):
    """A rendered page: its title, which tab it is under, its body, and how it stays live
    (``refresh``: reload the body when events land; ``tick``: also every few seconds; ``none``)."""

    title: str
    tab: str
    body: str
    live: str = "refresh"


def e(value: Any) -> str:
    """``value`` as HTML text or attribute (`topics.base.html_text`): escaped, its control
    characters shown as U+FFFD and its bidirectional controls as `\\u202e` and the like, so a
    value from the log cannot pass for another (`invoice-\\u202e1337-lanif` shown as
    `invoice-final-7331`: review Z)."""
    return html_text(value)


def link(href: str, text: Any) -> str:
    return f'<a href="{e(href)}">{e(text)}</a>'


def path_of(prefix: str, key: str) -> str:
    return prefix + quote(key, safe="")


def frame(page: Page, summary: Mapping[str, Any], source: str, live: bool) -> str:
    """The whole document around ``page``'s body."""
    tabs = "".join(
        f'<a class="tab{" on" if name == page.tab else ""}" href="{href}">{label}</a>' for name, href, label in NAV
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{e(page.title)} · mesh console</title><link rel="stylesheet" href="/static/console.css"></head>'
        f'<body data-live-source="{"yes" if live else "no"}"><header><span class="brand">mesh console</span>'
        f"<nav>{tabs}</nav>{status_line(summary, source, live)}</header>"
        f'<main id="main" data-live="{e(page.live)}">{page.body}</main>'
        '<script src="/static/console.js"></script></body></html>\n'
    )


def status_line(summary: Mapping[str, Any], source: str, live: bool) -> str:
    held = f"{summary['events']:,} events"
    if summary["events"]:
        held += f" (seq {summary['first_seq']}..{summary['last_seq']})"
    notes = []
    if summary["dropped"] or summary["starts_after"]:
        notes.append(
            f"older events are not shown: the console keeps the newest {summary['max_events']:,} (--max-events) "
            f"and {summary['max_bytes'] / 2**20:,.0f} MiB of their data (--max-mb)"
        )
    if summary["undecodable"]:
        notes.append(f"{summary['undecodable']:,} stored message(s) that are not events, skipped")
    state = '<span id="live" class="live">● live</span>' if live else '<span class="still">file: not live</span>'
    note = "".join(f'<div class="note">{e(n)}</div>' for n in notes)
    return (
        f'<div class="status"><span>{e(source)}</span> · <span id="held" data-last-seq="{summary["last_seq"]}">'
        f"{e(held)}</span> · {state}</div>{note}"
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "", empty: str = "none") -> str:
    """A table; cells are HTML already (escape values with `e`)."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr class="empty"><td colspan="{len(headers)}">{e(empty)}</td></tr>'
    return f'<table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def pager(path: str, params: Mapping[str, str], page: int, total: int, per_page: int = PER_PAGE) -> str:
    """`N matching · page p of n` with links to the pages before and after."""
    pages = max(1, -(-total // per_page))
    kept = {k: v for k, v in params.items() if v and k != "page"}

    def to(n: int, text: str) -> str:
        return f'<a class="page" href="{e(path + "?" + urlencode({**kept, "page": n}))}">{text}</a>'

    before = to(page - 1, "← newer") if page > 1 else ""
    after = to(page + 1, "older →") if page < pages else ""
    return f'<div class="pager"><span class="total">{total:,} matching</span> · page {page} of {pages} {before} {after}</div>'


def ago(time: str | None, now: datetime | None = None) -> str:
    """``time`` and how long ago it was, `2026-12-02T11:40:55Z (4 s ago)`."""
    if not time:
        return ""
    try:
        seconds = ((now or datetime.now(UTC)) - instant(time)).total_seconds()
    except ValueError:
        return e(time)
    span = (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.0f} min"
        if seconds < 7200
        else f"{seconds / 3600:.0f} h"
    )
    return f'<span title="{e(time)}">{e(time[11:23] or time)} ({span} ago)</span>'


def pretty(value: Any, limit: int = 100_000) -> str:
    """``value`` as indented JSON in a <pre>, cut at ``limit`` characters with a note."""
    return f"<pre>{e(bounded_json(value, limit))}</pre>"


def bounded_json(value: Any, limit: int, advice: str = "") -> str:
    """``value`` as indented JSON, at most about ``limit`` characters: one larger than that as
    compact JSON is not indented at all (indenting 20 MB took seconds of the event loop on every
    view: review Z), only the start of its compact form is shown, with a note."""
    encoded = _json.encode(value)
    if len(encoded) > limit:
        return encoded[:limit].decode(errors="ignore") + f"\n… cut at {limit:,} bytes of {len(encoded):,} (compact){advice}"
    text = msgspec.json.format(encoded, indent=2).decode()
    if len(text) > limit:
        text = text[:limit] + f"\n… cut at {limit:,} characters of {len(text):,}{advice}"
    return text
