"""`mesh kb`: add to, remove from and search a knowledge base (`mesh.coordination.knowledge`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import msgspec

from mesh.bus.client import Mesh
from mesh.bus.settings import MeshSettings
from mesh.cli.options import UserError, nats_options, parse_json, run, token
from mesh.coordination.knowledge import DEFAULT_LIMIT, KnowledgeBase
from mesh.projections.fulltext import MAX_LIMIT, Hit
from topics.base import json_visible, shorten, visible
from topics.knowledge import MAX_TEXT

__all__ = ["kb"]

T = TypeVar("T")


@click.group()
def kb() -> None:
    """Knowledge bases: entries of text with tags and metadata, searched by keywords (BM25)."""


@kb.command("add")
@click.argument("name", callback=token("knowledge base"))
@click.option("--text", help="the entry's text (default: read from stdin)")
@click.option("--tag", "tags", multiple=True, help="a tag (repeatable)")
@click.option("--metadata", "metadata_json", default="{}", help="the entry's metadata, a JSON object")
@nats_options
def add(name: str, text: str | None, tags: tuple[str, ...], metadata_json: str, settings: MeshSettings) -> None:
    """Add an entry to knowledge base NAME; print its id."""
    metadata = parse_json(metadata_json, "--metadata")
    if not isinstance(metadata, dict):
        raise click.BadParameter(f"--metadata must be a JSON object, not {metadata_json[:80]!r}")
    body = sys.stdin.read(MAX_TEXT + 1) if text is None else text  # never more than an entry may hold
    if len(body) > MAX_TEXT:
        raise click.BadParameter(f"the entry's text is over {MAX_TEXT:,} characters (a knowledge entry's limit)")
    if not body.strip():
        raise click.BadParameter("the entry's text is empty (give --text, or the text on stdin)")
    click.echo(run(_with(settings, name, lambda base: base.add(body, tags=tags, metadata=metadata))))


@kb.command("remove")
@click.argument("name", callback=token("knowledge base"))
@click.argument("entry_id")
@nats_options
def remove(name: str, entry_id: str, settings: MeshSettings) -> None:
    """Remove entry ENTRY_ID from knowledge base NAME (the log keeps it, and past searches).
    An entry that is not in the base is an error (exit 1), and nothing is recorded."""

    async def remove_if_there(base: KnowledgeBase) -> bool:
        if not any(entry.id == entry_id for entry in await base.entries()):
            return False
        return await base.remove(entry_id)

    if not run(_with(settings, name, remove_if_there)):
        raise UserError(f"{shorten(entry_id)!r} is not an entry of {name}: nothing removed")
    click.echo(f"removed {entry_id}")


@kb.command("search")
@click.argument("name", callback=token("knowledge base"))
@click.argument("query")
@click.option("--tag", "tags", multiple=True, help="only entries with this tag (repeatable: all of them)")
@click.option("--author", default=None, help="only entries this author added")
@click.option("--since", default=None, help="only entries added at or after this RFC 3339 time")
@click.option("--until", default=None, help="only entries added at or before this RFC 3339 time")
@click.option(
    "--limit", default=DEFAULT_LIMIT, show_default=True, type=click.IntRange(1, MAX_LIMIT), help="hits at most"
)
@click.option("--as-of", "as_of", default=None, help="answer as of this stream sequence or RFC 3339 time")
@click.option("--json", "as_json", is_flag=True, help="print the hits as JSON lines")
@nats_options
def search(name: str, query: str, tags: tuple[str, ...], author: str | None, since: str | None, until: str | None,
           limit: int, as_of: str | None, as_json: bool, settings: MeshSettings) -> None:  # fmt: skip
    """Search knowledge base NAME for the words of QUERY, best first."""
    position: int | str | None = int(as_of) if as_of is not None and as_of.isascii() and as_of.isdigit() else as_of
    hits: list[Hit] = run(_with(settings, name, lambda base: base.search(
        query, tags=tags, author=author, since=since, until=until, limit=limit, as_of=position)))  # fmt: skip
    for hit in hits:
        if as_json:
            click.echo(json_visible(msgspec.json.encode(hit).decode()))
        else:
            tags_text = f" [{', '.join(hit.tags)}]" if hit.tags else ""
            # ids, authors and tags are any text a publisher chose: no escape sequence reaches the terminal
            click.echo(visible(f"{hit.score:8.4f}  {hit.id}  {hit.author}{tags_text}  {json.dumps(hit.text[:120])}"))


async def _with(settings: MeshSettings, name: str, action: Callable[[KnowledgeBase], Awaitable[T]]) -> Any:
    async with await Mesh.connect(settings=settings) as mesh:
        try:
            return await action(KnowledgeBase(mesh, name))
        except ValueError as error:
            raise UserError(str(error)) from None
