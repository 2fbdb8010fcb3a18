"""`rebuild_file` from an exported file, no server: its fast path (handler tables fed by a
typed decode of whole blocks) gives the states, seqs and counts of its general path, and the
states of a plain fold over `read_file`'s records, whatever the file holds."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replay.state
from mesh.projections import REGISTRY, Projection, ProjectionState, TasksProjection, TasksState, fold, until
from replay import read_file, rebuild_file
from replay.export import write_lines
from replay.files import TypedLines, line_blocks
from tests.test_projections import FAMILIES, at, error
from topics import (
    AgentStarted,
    AgentStopped,
    BidAwarded,
    BidCalled,
    BidPlaced,
    BoardDeleted,
    BoardWritten,
    ChatMessage,
    CloudEvent,
    ConversationTurn,
    DeadLettered,
    Event,
    FlowCompleted,
    FlowFailed,
    FlowStarted,
    FlowStepCompleted,
    FlowStepFailed,
    FlowStepScheduled,
    LlmCalled,
    LlmFailed,
    Record,
    TaskAttemptFailed,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskHandedOff,
    TaskProgress,
    TaskRequested,
    ToolCalled,
    VoteCast,
    VoteDecided,
    VoteProposed,
    encode_data,
)
from topics.humans import HumanAnswered, HumanAsked, HumanExpired
from topics.knowledge import KnowledgeAdded, KnowledgeRemoved
from topics.registry import EVENT_TYPES, home_subject

pytestmark = pytest.mark.unit

SPEC = {"steps": {"a": {"capability": "c"}, "b": {"capability": "c", "after": ["a"]}}}
EVERY_TYPE: list[Event] = [
    TaskRequested(task_id="t1", capability="c", input={"x": 1}),
    TaskClaimed(task_id="t1", agent="a", attempt=1),
    TaskProgress(task_id="t1", agent="a", attempt=1),
    TaskFailed(task_id="t1", agent="a", attempt=1, error=error(retryable=True)),
    TaskClaimed(task_id="t1", agent="a", attempt=2),
    TaskCompleted(task_id="t1", agent="a", attempt=2, output="done"),
    TaskRequested(capability="c"),
    TaskCancelled(task_id="t2", reason="no"),
    TaskHandedOff(task_id="t3", agent="a", attempt=1, capability="c", to="d", next_task_id="t4", next_request_seq=9),
    TaskAttemptFailed(task_id="t3", agent="a", attempt=1, error=error(retryable=True), retry_in=1.0, capability="c"),
    TaskCancelRequested(task_id="t2", token="secret", reason="no"),
    BoardWritten(board="b", key="k", value=[1], author="a"),
    BoardDeleted(board="b", key="k", author="a"),
    KnowledgeAdded(kb="kb", text="tea is a drink", tags=("tea",), metadata={"n": 1}, author="a"),
    KnowledgeRemoved(kb="kb", entry_id="not-there", author="a"),
    VoteProposed(proposal_id="p", question="?", options=("y", "n"), voters=("a", "b"), deadline=at(100)),
    VoteCast(proposal_id="p", voter="a", choice="y"),
    VoteDecided(proposal_id="p", outcome="y"),
    FlowStarted(workflow_id="w", name="f", spec=SPEC),
    FlowStepScheduled(workflow_id="w", step="a", task_id="t1"),
    FlowStepFailed(workflow_id="w", step="a", task_id="t1", error=error()),
    FlowStepCompleted(workflow_id="w", step="b", task_id="t3", output=2),
    FlowCompleted(workflow_id="w", output=3),
    FlowFailed(workflow_id="w"),
    ChatMessage(room="r", speaker="a", content="hi"),
    ConversationTurn(conversation="c", role="user", content="hi", author="a"),
    AgentStarted(agent_id="a1", role="echo", capabilities=("echo",)),
    AgentStopped(agent_id="a1", role="echo", reason="done", handled=3),
    BidCalled(task_id="t", capability="c", input={"x": 1}),
    BidPlaced(task_id="t", bidder="b", cost=1.5),
    BidAwarded(task_id="t", winner="b", cost=1.5),
    LlmCalled(agent="a", task_id="t", call_index=0, model="m", request={"messages": []}, response={"id": "r"}),
    LlmFailed(agent="a", task_id="t", call_index=1, attempt=1, model="m", request={"messages": []},
              error_type="RateLimitError", message="slow down", status=429, retry_after=2.0),
    ToolCalled(agent="a", task_id="t", call_index=0, tool="search", arguments={"q": "x"}, result=[1, 2]),
    DeadLettered(subject="mesh.work.x", reason="bad_data", error="nope", raw="e30="),
    HumanAsked(question_id="q", question="ship?", options=("yes", "no"), task_id="t", expires_at=at(200)),
    HumanAnswered(question_id="q", answer="yes", answered_by="ada"),
    HumanExpired(question_id="q2", reason="no answer"),
]
UNDECODABLE = 4  # in a log of `write_log`: three of the oddities (not the unknown type) and the raw message


class Audited(TasksProjection):
    """The tasks fold behind an overridden `evolve`: not folded by its table, so a rebuild
    that includes it takes the general path for every block."""

    name = "audited-tasks"

    def evolve(self, state: TasksState, record: Record) -> TasksState:
        return super().evolve(state, record)


def envelope(data: Event, seq: int, **changes: Any) -> bytes:
    event = CloudEvent(specversion="1.0", id=f"ev-{seq}", source="test", type=data.TYPE, time=at(seq),
                       correlationid=f"c-{seq % 3}" if seq % 2 else None, data=msgspec.Raw(encode_data(data)))  # fmt: skip
    return msgspec.json.encode(msgspec.structs.replace(event, **changes))


def oddities(seq: int) -> list[tuple[int, str, bytes]]:
    """Lines the fast path cannot take: each sends its block to the general reader."""
    bad_data = b'{"specversion":"1.0","id":"x","source":"s","type":"mesh.task.claimed","time":"%s","data":{"agent":1}}'
    return [
        (seq, "mesh.x", b'{"specversion": "1.0", "id": "broken'),  # not JSON
        (seq + 1, "mesh.x", envelope(EVERY_TYPE[-1], seq + 1, type="mesh.never.heard")),  # an unknown type
        (seq + 2, "mesh.x", envelope(EVERY_TYPE[-1], seq + 2, specversion="0.3")),  # not a CloudEvent 1.0
        (seq + 3, "mesh.task.t1", bad_data % at(seq + 3).encode()),  # a handled type whose data does not decode
    ]


def subject_of(data: Event, seq: int) -> str:
    """A subject for ``data``: its own where the data names it (a board event's key) or the
    fold reads it (a task's owner and capability), else any."""
    if isinstance(data, TaskRequested):
        return f"mesh.work.{data.capability}.anon"
    if isinstance(data, TaskCancelRequested):
        return f"mesh.cancel.{data.task_id}"
    if type(data).TYPE.startswith("mesh.task."):
        return f"mesh.task.{getattr(data, 'capability', '') or 'c'}.anon.{getattr(data, 'task_id', 't')}"
    if isinstance(data, HumanAsked | HumanExpired):
        return f"mesh.ask.role.{data.question_id}"
    return home_subject(data) or f"mesh.test.{seq}"


def write_log(path: Path, events: list[Event], odd_at: int) -> int:
    """``events`` at seq 1, 2, ..., then one of every type; the oddities before event
    ``odd_at``, a raw (not CloudEvent) message halfway and a blank line. Returns the last seq."""
    lines: list[tuple[int, str, bytes]] = []
    for n, data in enumerate([*events, *EVERY_TYPE]):
        if n == odd_at:
            lines += oddities(len(lines) + 1)
        seq = len(lines) + 1
        lines.append((seq, subject_of(data, seq), envelope(data, seq)))
    raw = lines[-1][0] + 1
    lines.insert(len(lines) // 2, (raw, "mesh.chat.raw", b"\xff not an event"))
    write_lines(path, lines, raw_seqs={raw})
    text = path.read_bytes().split(b"\n")
    text.insert(len(text) // 3, b"  ")
    path.write_bytes(b"\n".join(text))
    return raw - 1


def content(state: ProjectionState) -> ProjectionState:
    """The state without its resume point."""
    return msgspec.structs.replace(state, seq=0)


def plain(path: Path, projection: Projection[Any], end: int | None = None) -> ProjectionState:
    """A plain fold of `read_file`'s records (up to seq ``end``)."""
    records = read_file(path).records
    return content(fold(projection, until(records, seq=end) if end is not None else records))


@contextlib.contextmanager
def small_blocks() -> Iterator[list[bool]]:
    """Blocks of a line or two, so that a file has blocks for both paths; lists, per block the
    fast path tried, whether it took it."""
    taken: list[bool] = []
    decode = TypedLines.decode

    def spy(self: TypedLines, block: bytes | memoryview) -> list[Any] | None:
        lines = decode(self, block)
        taken.append(lines is not None)
        return lines

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replay.state, "_BLOCK", 600)
        patch.setattr(TypedLines, "decode", spy)
        yield taken


def assert_same(fast: dict[str, Any], general: dict[str, Any]) -> None:
    for name, rebuilt in fast.items():
        other = general[name]
        assert rebuilt.state == other.state, name
        assert (rebuilt.seq, rebuilt.folded, rebuilt.undecodable) == (other.seq, other.folded, other.undecodable)


def check(path: Path, end: int | None) -> None:
    """Fast path == general path (forced by `Audited`) == a plain fold of `read_file`."""
    with small_blocks() as taken:
        fast = rebuild_file(path, at=end)
    if end is None:
        assert True in taken and False in taken  # both paths ran
    general = rebuild_file(path, [*REGISTRY.values(), Audited()], at=end)
    assert_same(fast, general)
    for name, projection in REGISTRY.items():
        assert content(fast[name].state) == plain(path, projection, end), name
    assert content(general["tasks"].state) == content(general[Audited.name].state)


class TestRebuildFile:
    def test_log_of_every_type(self, tmp_path: Path) -> None:
        """A log with every event type, an undecodable line and an unknown type: same states,
        seqs and counts by either path and by a plain fold, whole and up to a seq."""
        assert {type(data).TYPE for data in EVERY_TYPE} == set(EVENT_TYPES)
        path = tmp_path / "log.jsonl"
        last = write_log(path, EVERY_TYPE, odd_at=5)
        check(path, None)
        check(path, 12)
        whole = rebuild_file(path)["tasks"]
        assert (whole.seq, whole.folded, whole.undecodable) == (last, last - 2, UNDECODABLE)
        assert {v.status for v in whole.state.tasks.values()} == {"completed", "requested", "cancelled", "handed_off"}

    @settings(max_examples=50, deadline=None, database=None)
    @given(
        events=st.lists(st.one_of(FAMILIES), min_size=1, max_size=50),
        odd=st.integers(min_value=0, max_value=50),
        end=st.integers(min_value=1, max_value=120),
    )
    def test_any_log(self, tmp_path_factory: pytest.TempPathFactory, events: list[Event], odd: int, end: int) -> None:
        """The same for logs of the projection families, with colliding ids, cut at any seq."""
        path = tmp_path_factory.mktemp("log") / "log.jsonl"
        write_log(path, events, odd_at=min(odd, len(events)))
        check(path, None)
        check(path, end)

    @settings(max_examples=50, deadline=None, database=None)
    @given(lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12),
           chunk=st.integers(1, 64), final=st.booleans())  # fmt: skip
    def test_line_blocks_are_the_file_in_whole_lines(
        self, tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], chunk: int, final: bool
    ) -> None:
        """Blocks end at line ends and together are the file (but a blank last line)."""
        path = tmp_path_factory.mktemp("blocks") / "f"
        data = b"\n".join(lines) + (b"\n" if final else b"")
        path.write_bytes(data)
        blocks = [bytes(block) for block in line_blocks(path, chunk_size=chunk)]
        assert all(block.endswith(b"\n") for block in blocks[:-1])
        joined = b"".join(blocks)
        assert joined == data or (joined == data[: len(joined)] and not data[len(joined) :].strip())
