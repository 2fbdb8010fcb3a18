"""`Conversation`: a model conversation whose turns are events, so it outlives any process.

    chat = ctx.conversation("support-42")        # in a handler; Conversation(mesh, name) elsewhere
    await chat.add("user", question)
    reply = await ctx.llm.chat(await chat.messages())   # fitted to the model's context window
    await chat.add_message(reply.choices[0].message)

Each turn is a `mesh.conversation.turn` on `mesh.conversation.<name>`, numbered by its place
in the log. Inside a handler a turn's id is derived from the task (`Origin`), so a
redelivered task that adds the same turns in the same order adds none twice, and an agent
restarted mid-conversation reads the conversation back from the log and goes on. A
`Conversation` keeps its latest `max_turns` turns in memory (default 1000; `count` counts
them all) and reads only what is new, with direct gets of the subject (no consumer). A
message on the subject that is not a turn of this conversation is skipped with a warning.

What a connection has read of a conversation is kept for the next `Conversation` of that
name (the `KEPT` latest conversations used, each at most its `max_turns` and 8 MiB of turns):
each task of a long conversation read it again from its first turn, one direct get a turn,
5 s a task at 20,000 turns (review N); now the first task of a process does, and the next
read only what is new. Each `Conversation` has its own copy of the list; the turns it returns
are copies, so a handler that changes one changes nobody else's.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import msgspec
import structlog

from mesh.bus import jetstream, payloads
from mesh.bus.client import Mesh, Published
from mesh.coordination.origin import Origin
from mesh.errors import MeshError
from mesh.projections.histories import MAX_TURNS, History, HistoryTurn, add_turn
from topics import subjects
from topics.base import check_token, shorten
from topics.conversations import ROLES, ConversationTurn

__all__ = ["Conversation"]

log = structlog.get_logger("mesh.conversation")
CATCH_UP = 20  # looks for a turn just written that a replica has not stored yet (50 ms apart at first)
KEPT = 8  # conversations a connection keeps read (the latest used), for the next `Conversation` of each
_read: weakref.WeakKeyDictionary[Any, OrderedDict[tuple[str, int], tuple[int, History]]] = weakref.WeakKeyDictionary()
_message_keys = ("content", "name", "tool_calls", "tool_call_id")


class Conversation:
    """One named model conversation. Inside a handler use `ctx.conversation(name)`: its turns
    get ids derived from the task, so a redelivered handler adds none twice."""

    def __init__(self, mesh: Mesh, name: str, *, origin: Origin | None = None, max_turns: int = MAX_TURNS,
                 keep: bool = True) -> None:  # fmt: skip
        """``keep``: start from, and leave, what this connection has read of the conversation."""
        self.mesh = mesh
        self.name = check_token("conversation", name)
        self.subject = subjects.conversation(name)
        self.origin = origin or Origin(author=mesh.source)
        if not 1 <= max_turns <= MAX_TURNS:
            raise ValueError(f"max_turns is 1 to {MAX_TURNS}, not {max_turns!r}")
        self.max_turns = max_turns
        self._history = History(conversation=name)
        self._seq = 0  # the last stream sequence read on the subject
        self._reading = asyncio.Lock()  # one read at a time: two would fold the same turn twice
        self._kept = _read.setdefault(mesh.nc, OrderedDict()) if keep else None
        found = self._kept.get((self.name, max_turns)) if self._kept is not None else None
        if found is not None:
            self._seq, kept = found
            self._history = History(conversation=name, turns=list(kept.turns), count=kept.count)

    @property
    def count(self) -> int:
        """Turns the conversation has had, as of the last read (more than `turns` holds past `max_turns`)."""
        return self._history.count

    async def refresh(self, *, at_least: int = 0) -> History:
        """Fold in the turns stored since the last read (at least up to sequence ``at_least``)."""
        async with self._reading:
            history = await self._read(at_least)
            self._leave()
            return history

    def _leave(self) -> None:
        """Keep what was read for the next `Conversation` of this name on this connection."""
        if self._kept is None:
            return
        place = (self.name, self.max_turns)
        found = self._kept.get(place)
        if found is None or found[0] < self._seq:
            history = self._history
            self._kept[place] = (self._seq, History(conversation=self.name, turns=list(history.turns), count=history.count))
        self._kept.move_to_end(place)
        while len(self._kept) > KEPT:
            self._kept.popitem(last=False)

    async def _read(self, at_least: int) -> History:
        looks = 0
        skipped, first = 0, (0, "")  # what was not a turn, and the first of it: one log line a read
        while True:
            msg = await jetstream.direct_get(self.mesh.js, seq=self._seq + 1, subject=self.subject, next=True)
            if msg is None:
                if skipped:
                    log.warning("not turns of this conversation: skipped", conversation=self.name, count=skipped,
                                first_seq=first[0], why=first[1])  # fmt: skip
                    skipped = 0
                if self._seq >= at_least:
                    return self._history
                looks += 1  # a replica that answered has not stored what the leader acknowledged yet
                if looks > CATCH_UP:
                    raise MeshError(f"conversation {self.name}: turn at seq {at_least} not readable; is the server ok?")
                await asyncio.sleep(0.05 * looks)
                continue
            self._seq = max(self._seq + 1, msg.seq or 0)
            why = await self._fold(msg.data or b"", self._seq)
            if why is not None:
                skipped, first = skipped + 1, first if skipped else (self._seq, why)

    async def _fold(self, data: bytes, seq: int) -> str | None:
        """Fold one stored message in; why it is not a turn of this conversation, if it is not."""
        try:
            record = await payloads.resolve(self.mesh.js, self.subject, data, seq)
        except (MeshError, ValueError, KeyError, msgspec.MsgspecError) as error:
            return f"not a conversation turn: {str(error)[:300]}"
        turn = record.data
        if not isinstance(turn, ConversationTurn) or turn.conversation != self.name or turn.role not in ROLES:
            return f"a {shorten(record.event.type, 80)} that is not a turn of this conversation"
        add_turn(self._history, turn, seq, record.event.time or "", self.max_turns)
        return None

    async def turns(self) -> list[HistoryTurn]:
        """The latest turns (at most `max_turns`), oldest first: copies, the caller's to change."""
        return [_copy(turn) for turn in (await self.refresh()).turns]

    async def messages(self) -> list[dict[str, Any]]:
        """The latest turns as chat messages, ready for `ctx.llm.chat`."""
        return [dict(turn.message) for turn in await self.turns()]

    async def add(
        self,
        role: str,
        content: str | None = None,
        *,
        name: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
    ) -> HistoryTurn:
        """Append a turn; returns it as stored (numbered). A turn this task added already (a
        redelivery) is not added again: the stored one is returned."""
        if role not in ROLES:
            raise ValueError(f"a turn's role is one of {', '.join(ROLES)}, not {role!r}")
        if content is not None and not isinstance(content, str):
            raise TypeError(f"a turn's content is a string or None, not {type(content).__name__}")
        turn = ConversationTurn(conversation=self.name, role=role, content=content, name=name,
                                tool_calls=tool_calls, tool_call_id=tool_call_id, author=self.origin.author)  # fmt: skip
        published = await self._publish(turn, self.origin.next_id(f"conversation/{self.name}"))
        history = await self.refresh(at_least=published.seq)
        stored = next((t for t in reversed(history.turns) if t.seq == published.seq), None)
        if stored is None:  # only under rerun, for a turn the log does not hold (a divergence)
            unstored = History(conversation=self.name, count=history.count)
            add_turn(unstored, turn, published.seq, "")
            return unstored.turns[-1]
        return _copy(stored)

    async def add_message(self, message: Any) -> HistoryTurn:
        """Append a chat message: a dict, or the SDK's `ChatCompletionMessage` (a model's reply)."""
        if hasattr(message, "model_dump"):
            message = message.model_dump(mode="json", exclude_none=True)
        if not isinstance(message, Mapping):
            raise TypeError(f"a message is a mapping with a role, not {type(message).__name__}")
        fields = {key: message[key] for key in _message_keys if message.get(key) is not None}
        return await self.add(str(message.get("role", "")), **fields)

    async def _publish(self, turn: ConversationTurn, event_id: str) -> Published:
        return await self.mesh.publish(self.subject, turn, event_id=event_id,
                                       correlation_id=self.origin.correlation_id,
                                       causation_id=self.origin.cause_id)  # fmt: skip


def _copy(turn: HistoryTurn) -> HistoryTurn:
    """``turn`` with a message of its own (the one read is shared with the connection's copy)."""
    return msgspec.structs.replace(turn, message=dict(turn.message))
