"""How `mesh tail` shows events to a person: one line per event, in columns fitted to the
terminal's width (read again for every line, so a resized window is followed), coloured by
what happened. Piped output is JSON lines instead (`mesh.cli.watch`); this is only the view."""

from __future__ import annotations

import msgspec
from rich.console import Console
from rich.text import Text

from topics.app import UndeclaredAppEvent
from topics.base import visible
from topics.record import Record

__all__ = ["EventLines", "Columns", "PipeConsole", "middle", "shown_data"]

_json = msgspec.json.Encoder()
_PREFIX = "mesh."  # every type and subject in the log starts with it: not worth a column's width

# the style of a type, by its last word (the verb) or its family; the first match wins
_VERB_STYLES = {
    "requested": "yellow",
    "claimed": "cyan",
    "progress": "cyan",
    "completed": "green",
    "decided": "green",
    "awarded": "green",
    "failed": "bold red",
    "lettered": "bold red",
    "cancelled": "red",
    "handed_off": "magenta",
    "started": "blue",
    "stopped": "blue",
}
_FAMILY_STYLES = {"llm": "dim", "tool": "dim", "board": "bright_white", "chat": "bright_white"}


class PipeConsole(Console):
    """A rich Console whose closed pipe (`mesh tail --text | head`) is a `BrokenPipeError` for
    the caller to end on, not rich's own `SystemExit` raised inside a NATS callback (where it
    would end the callback, and the command would wait for ever)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError("stdout closed")


class Columns(msgspec.Struct, frozen=True):
    """Widths, in terminal cells, of one line's columns; `who` is 0 when the terminal is too
    narrow to show the sender."""

    time: int
    seq: int
    type: int
    subject: int
    who: int
    data: int

    @classmethod
    def fitting(cls, width: int) -> Columns:
        time, seq, kind = 12, 7, 19  # HH:MM:SS.mmm, #123456, flow.step_scheduled
        rest = max(width - (time + seq + kind + 4), 24)  # four single spaces between five columns
        who = min(max(rest // 5, 10), 28) if rest >= 60 else 0
        subject = min(max(rest * 2 // 5, 16), 52)
        data = max(rest - subject - who - (1 if who else 0), 8)
        return cls(time, seq, kind, subject, who, data)


def style_of(event_type: str) -> str:
    parts = event_type.split(".")
    verb = parts[-1] if len(parts) > 2 else ""
    if verb in _VERB_STYLES:
        return _VERB_STYLES[verb]
    return _FAMILY_STYLES.get(parts[1] if len(parts) > 1 else "", "")


def middle(value: str, width: int) -> str:
    """``value`` cut to ``width`` characters in its middle: ids end in their random part
    (UUIDv7s begin with the time, alike for events of the same minute)."""
    if len(value) <= width or width < 5:
        return value
    head = (width - 1) // 2
    return f"{value[:head]}…{value[len(value) - (width - 1 - head):]}"


def shown_data(record: Record) -> str:
    """The data as compact JSON, without the fields that only repeat a token of the subject
    (the task id and capability of `task.echo.<id>`, the agent id of `agent.<id>`) or the sender."""
    data = msgspec.to_builtins(record.data.data if isinstance(record.data, UndeclaredAppEvent) else record.data)
    if isinstance(data, dict):
        tokens = {*record.subject.split("."), record.event.source.rsplit("/", 1)[-1]}
        data = {k: v for k, v in data.items() if not (isinstance(v, str) and v in tokens)}
    return _json.encode(data).decode()


def _cell(value: str, width: int, style: str = "", *, right: bool = False, last: bool = False) -> Text:
    """One column: cut to ``width`` cells with an ellipsis, padded to it unless it ends the line."""
    text = Text(visible(value), style=style, no_wrap=True, overflow="ellipsis")  # the log's text, never escapes
    if right and text.cell_len < width:
        text = Text(" " * (width - text.cell_len)) + text
    text.truncate(width, overflow="ellipsis", pad=not last)
    return text


class EventLines:
    """Prints records as aligned lines on a rich `Console` (colour only where it is a terminal
    and `NO_COLOR` is unset, as rich decides)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def line(self, record: Record) -> Text:
        event = record.event
        columns = Columns.fitting(self.console.width)
        cells = [
            _cell(event.time[11:23], columns.time, "dim"),
            _cell(f"#{record.seq}", columns.seq, "dim", right=True),
            _cell(event.type.removeprefix(_PREFIX), columns.type, style_of(event.type)),
            _cell(middle(record.subject.removeprefix(_PREFIX), columns.subject), columns.subject),
        ]
        if columns.who:
            cells.append(_cell(middle(event.source.rsplit("/", 1)[-1], columns.who), columns.who, "blue"))
        cells.append(_cell(shown_data(record), columns.data, last=True))
        return Text(" ").join(cells)

    def undecodable(self, seq: int, subject: str, error: object) -> Text:
        columns = Columns.fitting(self.console.width)
        head = [_cell("", columns.time), _cell(f"#{seq}", columns.seq, "dim", right=True)]
        width = self.console.width - columns.time - columns.seq - 2
        rest = _cell(f"{subject} undecodable: {error}", width, "red", last=True)
        return Text(" ").join([*head, rest])

    def show(self, text: Text) -> None:
        self.console.print(text, no_wrap=True, overflow="ellipsis", crop=True, soft_wrap=False)
