"""`mesh inbox` and `mesh answer`: the questions agents put to people (`ctx.ask`), and answering them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from mesh.bus.client import Mesh
from mesh.bus.settings import MeshSettings
from mesh.cli.options import nats_options, run, token
from mesh.coordination.humans import Humans
from mesh.projections import QuestionView, instant
from topics.base import shorten, visible
from topics.envelope import now_rfc3339
from topics.humans import MAX_ANSWER

__all__ = ["answer", "inbox"]


def _age(view: QuestionView, now: datetime) -> str:
    try:  # the envelope's time: the asker's `asked_at` is its own word (and may not be a time)
        seconds = int((now - instant(view.asked_time)).total_seconds())
    except (ValueError, TypeError, OverflowError):
        return "?"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _column(text: str, width: int) -> str:
    """``text`` in a column ``width`` wide: cut with an ellipsis if longer, so columns line up."""
    return f"{text:{width}}" if len(text) <= width else text[: width - 1] + "…"


def _row(view: QuestionView) -> dict[str, object]:
    asked = view.asked
    return {"question_id": asked.question_id, "question": asked.question, "options": list(asked.options),
            "context": asked.context, "agent": asked.agent, "roles": list(view.roles), "task_id": asked.task_id, "capability": asked.capability,
            "correlation_id": view.correlation_id, "asked_at": asked.asked_at, "expires_at": asked.expires_at,
            "seq": view.asked_seq}  # fmt: skip


@click.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object per open question, one a line")
@nats_options
def inbox(as_json: bool, settings: MeshSettings) -> None:
    """List the questions agents are waiting for a person to answer (answer with `mesh answer`)."""
    views = run(_inbox(settings))
    if as_json:
        for view in views:
            click.echo(json.dumps(_row(view)))
        return
    if not views:
        click.echo("no open questions")
        return
    now = datetime.now(UTC)
    click.echo(f"{'ID':36}  {'AGE':>5}  {'ROLE':24}  {'TASK':36}  QUESTION [OPTIONS]")
    for view in views:
        asked = view.asked
        options = f" [{' / '.join(asked.options)}]" if asked.options else ""
        role = " + ".join(view.roles) or "?"  # from the subjects: `agent` is what the asker says
        click.echo(visible(f"{asked.question_id:36}  {_age(view, now):>5}  {_column(role, 24)}  "
                           f"{_column(asked.task_id, 36)}  {shorten(asked.question, 200)}{options}"))  # fmt: skip
        if asked.context:  # the asker's words, often a client's: never escape sequences to the terminal
            click.echo(visible(f"{'':40}context: {shorten(asked.context, 300)}"))


async def _inbox(settings: MeshSettings) -> list[QuestionView]:
    async with await Mesh.connect(settings=settings) as mesh:
        return await Humans(mesh).inbox(now=now_rfc3339())


@click.command()
@click.argument("question_id", callback=token("question id"))
@click.argument("text", nargs=-1, required=True)
@click.option("--by", "answered_by", default=None, help="who answers (recorded; default this client's source)")
@click.option("--role", default=None, callback=token("agent role"),
              help="the agent role whose question it is, when more than one asked under QUESTION_ID (`mesh inbox` shows the role)")
@nats_options
def answer(question_id: str, text: tuple[str, ...], answered_by: str | None, role: str | None,
           settings: MeshSettings) -> None:  # fmt: skip
    """Answer question QUESTION_ID with TEXT (one of its options, if it has any). The first
    answer counts: a second one, or one to an expired question, is refused (exit 1)."""
    reply = " ".join(text)
    if len(reply) > MAX_ANSWER:
        raise click.BadParameter(f"an answer of {len(reply)} characters: at most {MAX_ANSWER}", param_hint="TEXT")
    published = run(_answer(settings, question_id, reply, answered_by, role))
    click.echo(f"answered {question_id} (seq {published.seq})")


async def _answer(settings: MeshSettings, question_id: str, reply: str, answered_by: str | None, role: str | None) -> object:
    async with await Mesh.connect(settings=settings) as mesh:
        return await Humans(mesh).answer(question_id, reply, role=role, answered_by=answered_by)
