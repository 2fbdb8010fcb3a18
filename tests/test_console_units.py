"""The console's parts with no server: the bounded index and its lookups, the pages' escaping,
query checks, dead-letter previews, and the live pages' bounded queues."""

from __future__ import annotations

import asyncio
import base64
import gc
import re
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from mesh.bus.client import decode_record
from mesh.console.index import EventQuery, LogIndex, NotHeld, decoded_size, record_size
from mesh.console.pages import bounded_json
from mesh.console.server import BadParameter, Hub, _event_query
from mesh.console.views import events_page, preview, task_page, tasks_page
from mesh.errors import MeshError
from mesh.projections import instant
from replay.causal import causal_slice
from topics.base import ErrorInfo, Event
from topics.chat import ChatMessage
from topics.dead import DeadLettered
from topics.envelope import CloudEvent, encode_envelope
from topics.flows import FlowCompleted, FlowStarted, FlowStepCompleted
from topics.record import Record
from topics.tasks import TaskClaimed, TaskCompleted, TaskFailed, TaskProgress, TaskRequested

pytestmark = pytest.mark.unit


def record(seq: int, subject: str, data: Event, *, correlation: str | None = None, cause: str | None = None,
           time: str | None = None) -> Record:  # fmt: skip
    event = CloudEvent(specversion="1.0", id=f"e{seq}", source="mesh://agent/a-1", type=data.TYPE,
                       time=time or f"2026-12-02T10:00:{seq % 60:02d}Z", correlationid=correlation, causationid=cause)  # fmt: skip
    return Record(seq=seq, subject=subject, event=event, data=data)


def task_events(task: str, start: int, correlation: str, owner: str = "anon") -> list[Record]:
    return [
        record(start, f"mesh.work.echo.{owner}", TaskRequested(capability="echo", task_id=task, input=1),
               correlation=correlation),  # fmt: skip
        record(start + 1, f"mesh.task.echo.{owner}.{task}", TaskClaimed(task_id=task, agent="a-1", attempt=1),
               correlation=correlation, cause=f"e{start}"),
        record(start + 2, f"mesh.task.echo.{owner}.{task}", TaskCompleted(task_id=task, agent="a-1", attempt=1, output=2),
               correlation=correlation, cause=f"e{start}"),
    ]  # fmt: skip

def tasks_index(count: int) -> LogIndex:
    """An index of ``count`` tasks of three events each (task `t<n>` from seq 3n+1)."""
    index = LogIndex()
    for n in range(count):
        index.extend(task_events(f"t{n}", 3 * n + 1, f"c{n}"))
    return index


class TestLogIndex:
    def test_keeps_only_the_newest(self) -> None:
        """Past max_events the oldest records leave the index and every lookup, and it says so."""
        index = LogIndex(max_events=5)
        for n in range(4):
            index.extend(task_events(f"t{n}", 3 * n + 1, f"c{n}"))
        assert len(index) == 5 and index.first_seq == 8 and index.last_seq == 12 and index.dropped == 7
        assert not index.complete and index.lookup("c", "c0") == [] and index.lookup("t", "t1") == []
        assert [r.seq for r in index.lookup("t", "t2")] == [8, 9]  # its request, seq 7, was dropped
        assert all(key in index.records for keys in index.keys.values() for key in keys)
        assert sum(len(keys) for keys in index.by_type.values()) == len(index.ids) == 5

    def test_keeps_the_newest_within_its_bytes(self) -> None:
        """Past max_bytes (`record_size`: the data decoded, estimated, and an overhead) the oldest records
        leave, offloaded data counted once fetched; the newest stays whatever its size."""

        def sized(seq: int, text: str) -> Record:
            data = ChatMessage(room="room", speaker="s", content=text)
            plain = record(seq, "mesh.chat.room", data)
            event = msgspec.structs.replace(plain.event, data=msgspec.Raw(msgspec.json.encode(data)))
            return msgspec.structs.replace(plain, event=event)

        size = record_size(sized(1, "x" * 5000))
        index = LogIndex(max_bytes=3 * size + size // 2)
        index.extend(sized(seq, "x" * 5000) for seq in range(1, 11))
        assert [r.seq for r in index.records.values()] == [8, 9, 10] and index.dropped == 7
        assert index.bytes == 3 * size and index.summary()["bytes"] == 3 * size and not index.complete
        huge = sized(11, "y" * (10 * index.max_bytes))
        index.add(huge)
        assert list(index.records) == [11] and index.bytes == record_size(huge) > index.max_bytes
        index.add(sized(12, "z"))
        assert list(index.records) == [12] and index.bytes == record_size(sized(12, "z"))
        assert index.lookup("y", ChatMessage.TYPE) == [index.records[12]] and set(index.ids) == {"e12"}

    def test_the_owners_of_task_ids_go_with_their_tasks(self) -> None:
        """The tasks fold's map of each id's owners (review X4) is trimmed with the tasks."""
        index = LogIndex(max_events=4)
        for n in range(6):
            index.extend(task_events(f"t{n}", 3 * n + 1, f"c{n}", owner=f"u{n}"))
        kept = {view.task_id for view in index.tasks.tasks.values()}
        assert len(kept) <= 4 and "t5" in kept
        assert set(index.tasks.owners) == kept and all(index.tasks.owners[t] == [f"u{t[1:]}"] for t in kept)

    def test_a_causal_slice_expands_each_cause_once(self) -> None:
        """Any client can store many events under one id that name it as their cause (review Z:
        32,000 of them held the console 30 s): each id's effects are looked up once."""

        class Counting(dict[Any, Any]):
            gets = 0

            def get(self, *args: Any) -> Any:
                Counting.gets += 1
                return super().get(*args)

        index = LogIndex()
        index.extend(task_events("victim", 1, "victim"))
        data = ChatMessage(room="room", speaker="s", content="x")
        for seq in range(4, 2004):
            dup = record(seq, "mesh.chat.room", data, correlation="victim", cause="dup")
            index.add(msgspec.structs.replace(dup, event=msgspec.structs.replace(dup.event, id="dup")))
        index.keys = Counting(index.keys)
        found = index.causal("victim")
        assert len(found) == 2003 and [r.seq for r in found] == list(range(1, 2004))
        assert Counting.gets <= 10  # the three lookups of the root, and one per distinct cause id

    def test_a_query_filters_newest_first(self) -> None:
        """Subject, type (whole or its start), correlation and time narrow the events, newest first."""
        index = LogIndex()
        index.extend(task_events("t1", 1, "c1") + task_events("t2", 4, "c2"))
        index.add(record(7, "mesh.chat.room", ChatMessage(room="room", speaker="s", content="hi"), correlation="c2"))
        page, total = index.query(EventQuery(type="mesh.task."), limit=2)
        assert total == 6 and [r.seq for r in page] == [6, 5]
        assert [r.seq for r in index.query(EventQuery(subject="mesh.work.*.*"))[0]] == [4, 1]
        assert [r.seq for r in index.query(EventQuery(correlation="c2"))[0]] == [7, 6, 5, 4]
        since = instant("2026-12-02T10:00:05Z")
        assert [r.seq for r in index.query(EventQuery(since=since, correlation="c2"))[0]] == [7, 6, 5]
        assert index.query(EventQuery(type="mesh.task.requested"), offset=1)[0][0].seq == 1

    def test_an_event_whose_time_is_no_time_is_in_no_time_range(self) -> None:
        """Any client can store one: a time-bounded query leaves it out instead of failing."""
        index = LogIndex()
        index.extend(task_events("t1", 1, "c1"))
        index.add(record(4, "mesh.chat.room", ChatMessage(room="room", speaker="s", content="hi"), correlation="c1",
                         time="garbage"))  # fmt: skip
        since = instant("2026-12-02T10:00:00Z")
        assert [r.seq for r in index.query(EventQuery(since=since, correlation="c1"))[0]] == [3, 2, 1]
        assert [r.seq for r in index.query(EventQuery(correlation="c1"))[0]] == [4, 3, 2, 1]

    def test_causal_lookup_is_replays_slice(self) -> None:
        """The records found for a root through the lookups are exactly `replay.causal.causal_slice`'s."""
        records = task_events("t1", 1, "c1") + task_events("t2", 4, "c2")
        records.append(record(7, "mesh.chat.r", ChatMessage(room="r", speaker="s", content="x"), cause="e3"))
        records.append(record(8, "mesh.chat.r", ChatMessage(room="r", speaker="s", content="y"), cause="e7"))
        index = LogIndex()
        index.extend(records)
        for root in ("t1", "c1", "t2", "e7", "nothing"):
            assert index.causal(root) == causal_slice(records, root), root

    def test_tasks_are_folded_as_they_arrive(self) -> None:
        """The tasks projection is current after every record."""
        index = LogIndex()
        index.extend(task_events("t1", 1, "c1")[:2])
        assert index.tasks.tasks["t1"].status == "claimed"
        index.add(task_events("t1", 1, "c1")[2])
        assert index.tasks.tasks["t1"].status == "completed"


def decoded(seq: int, subject: str, data: Event, correlation: str = "c") -> Record:
    """A record as the console's sources make one: decoded from the event's JSON, so its data
    are objects of its own (as in `mesh.bus.client.decode_record`)."""
    event = CloudEvent(specversion="1.0", id=f"e{seq}", source="mesh://agent/a-1", type=data.TYPE,
                       time="2026-12-02T10:00:00Z", correlationid=correlation,
                       data=msgspec.Raw(msgspec.json.encode(data)))  # fmt: skip
    return decode_record(subject, encode_envelope(event), seq)


def held_by(build: Callable[[], Any]) -> tuple[Any, int]:
    """What ``build`` returns and the bytes it leaves allocated (tracemalloc), after a collection."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        built = build()
        gc.collect()
        return built, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


class TestMemoryBound:
    """What the index holds stays within max_bytes: the data decoded, not its JSON (tiny
    containers took 24 times the bound), and the folds keep no data of dropped events (the tasks
    fold kept every task's input: 50 tasks of 1 MB took a console bounded at 4 MiB to 56 MB)."""

    BOUND = 2 * 2**20

    def test_task_inputs_and_outputs_leave_the_folds_with_their_events(self) -> None:
        """Tasks, then other events that push the tasks' records out: the tasks stay (within
        their own weight), their inputs and outputs do not."""

        def build() -> LogIndex:
            index = LogIndex(max_bytes=self.BOUND)
            for n in range(12):
                task = f"t{n}"
                index.add(decoded(2 * n + 1, "mesh.work.echo.anon",
                                  TaskRequested(capability="echo", task_id=task, input="x" * 20_000)))  # fmt: skip
                index.add(decoded(2 * n + 2, f"mesh.task.echo.anon.{task}",
                                  TaskCompleted(task_id=task, agent="a-1", attempt=1, output="y" * 20_000)))  # fmt: skip
            for n in range(40):
                index.add(decoded(100 + n, "mesh.chat.room", ChatMessage(room="room", speaker="s", content="z" * 20_000)))
            return index

        index, held = held_by(build)
        assert held < 1.3 * self.BOUND
        views = index.tasks.tasks
        assert len(views) == 12 and all(v.status == "completed" for v in views.values())  # every task stays
        assert index.first_seq >= 100  # every task's record was dropped
        for n, view in enumerate(views.values()):
            assert (view.input, view.output) == (NotHeld(2 * n + 1), NotHeld(2 * n + 2))
        page = task_page(index, "t0")
        assert page is not None and "not held: it came with event 1," in page.body

    def test_the_folds_hold_no_more_than_their_records_brought(self) -> None:
        """A task keeps fields besides its input and output (a deadline, a cancel reason, an
        error in its history), each as long as a client made it: every task's entry is weighed
        by the records folded into it, and the oldest leave past max_bytes (review C: 60 tasks
        held 15 to 29 times the bound; 100,000 tiny tasks, 44 times)."""

        def build() -> LogIndex:
            index = LogIndex(max_bytes=self.BOUND)
            for n in range(60):
                index.add(decoded(n + 1, "mesh.work.echo.anon",
                                  TaskRequested(capability="echo", task_id=f"t{n}", deadline="9" * 400_000)))  # fmt: skip
            for n in range(20_000):
                index.add(decoded(100 + n, "mesh.work.echo.anon", TaskRequested(capability="echo", task_id=f"s{n}")))
            return index

        index, held = held_by(build)
        assert held < 2.2 * self.BOUND and index.view_bytes <= index.max_bytes
        assert not any(view.task_id.startswith("t") for view in index.tasks.tasks.values())

    def test_a_workflow_keeps_no_more_than_its_events_brought(self) -> None:
        """A step's `after` may name one step 50,000 times (review C: 60 such workflows held
        250 times the bound after their events were dropped)."""
        spec = {"steps": {"a": {"capability": "echo"}, "b": {"capability": "echo", "after": ["a"] * 50_000}}}

        def build() -> LogIndex:
            index = LogIndex(max_bytes=self.BOUND)
            for n in range(20):
                index.add(decoded(n + 1, f"mesh.flow.w{n}", FlowStarted(workflow_id=f"w{n}", name="n", spec=spec)))
            return index

        index, held = held_by(build)
        assert held < 2.2 * self.BOUND and len(index.workflows.workflows) == 1  # the newest stays, whatever it weighs

    def test_brackets_inside_strings_count_as_text(self) -> None:
        """A string of `[` counted 88 bytes a character: four such inputs of 0.9 MB emptied a
        console of 2,000 events at the default 256 MiB (review C)."""
        text = msgspec.json.encode("[" * 900_000)
        assert decoded_size(text) < 4 * len(text)
        assert decoded_size(msgspec.json.encode({"s": '"{,' * 100_000})) < 4 * 600_000
        tiny = msgspec.json.encode([[] for _ in range(1000)])
        assert decoded_size(tiny) > 20 * len(tiny)  # real structure still counts

    def test_a_forked_copy_of_a_request_lets_its_input_go(self) -> None:
        """`mesh replay fork` stores a request on the task's own subject, with no task id in its
        data: its input was kept for good (review C)."""
        index = LogIndex(max_events=2)
        index.add(decoded(1, "mesh.task.echo.anon.t1", TaskRequested(capability="echo", input=["copied"])))
        assert index.tasks.tasks["t1"].input == ["copied"]
        index.add(decoded(2, "mesh.chat.room", ChatMessage(room="room", speaker="s", content="x")))
        index.add(decoded(3, "mesh.chat.room", ChatMessage(room="room", speaker="s", content="y")))
        assert index.tasks.tasks["t1"].input == NotHeld(1)

    def test_an_input_equal_to_another_tasks_stays_with_its_event(self) -> None:
        """Small ints are one object in CPython: dropping one task's request showed another's
        input, still held, as not held (review C)."""
        index = LogIndex(max_events=3)
        index.add(decoded(1, "mesh.work.echo.anon", TaskRequested(capability="echo", task_id="t", input=1)))
        index.add(decoded(2, "mesh.work.echo.bob", TaskRequested(capability="echo", task_id="t", input=1)))
        index.add(decoded(3, "mesh.chat.room", ChatMessage(room="room", speaker="s", content="x")))
        index.add(decoded(4, "mesh.chat.room", ChatMessage(room="room", speaker="s", content="y")))  # drops seq 1
        assert index.tasks.tasks["bob.t"].input == 1  # another owner's task, its request still held

    def test_events_under_ever_new_owners_weigh_on_their_own_task_only(self) -> None:
        """A lifecycle event counted against every owner's task under its id: a role claiming
        one id under ever new owner tokens emptied the tasks list with 546 events (review D)."""
        index = LogIndex(max_bytes=self.BOUND)
        for n in range(50):
            index.add(decoded(n + 1, "mesh.work.echo.anon", TaskRequested(capability="echo", task_id=f"v{n}")))
        for n in range(600):
            owner = f"U{n}"
            index.add(decoded(100 + 2 * n, f"mesh.work.echo.{owner}", TaskRequested(capability="echo", task_id="x")))
            index.add(decoded(101 + 2 * n, f"mesh.task.echo.{owner}.x", TaskClaimed(task_id="x", agent="a", attempt=1)))
        assert all(f"v{n}" in index.tasks.tasks for n in range(50))  # still there, as are their events
        assert index.view_bytes <= index.max_bytes and len(index.tasks.owners["x"]) == 600

    def test_a_task_still_running_is_not_the_first_to_leave(self) -> None:
        """Entries left in the order they were first weighed: the most active long-running task
        went first, and came back on its next event with no capability and no input (review E)."""
        index = LogIndex(max_bytes=2**20)
        index.add(decoded(1, "mesh.work.echo.anon", TaskRequested(capability="echo", task_id="long", input=[1])))
        for n in range(2000):
            index.add(decoded(2 + 2 * n, "mesh.work.echo.anon", TaskRequested(capability="echo", task_id=f"s{n}")))
            if n % 10 == 0:
                index.add(decoded(3 + 2 * n, "mesh.task.echo.anon.long",
                                  TaskProgress(task_id="long", agent="a", attempt=1, message=f"{n}")))  # fmt: skip
        view = index.tasks.tasks["long"]
        assert "s0" not in index.tasks.tasks and view.capability == "echo" and view.input == NotHeld(1)

    def test_a_small_event_counts_brackets_in_its_strings_as_text(self) -> None:
        """Under 2 KiB a `[` inside a string still counted 88 bytes: 1,700 submissions of 3.5 MB
        in all emptied a default console of the 2,000 events before them (review D)."""
        text = msgspec.json.encode({"capability": "echo", "input": "[" * 1500})
        assert decoded_size(text) < 4 * len(text)

    def test_data_of_tiny_containers_is_counted_as_it_is_held(self) -> None:
        tiny: list[list[int]] = [[] for _ in range(20_000)]

        def build() -> LogIndex:
            index = LogIndex(max_bytes=self.BOUND)
            for n in range(1, 60):
                index.add(decoded(n, "mesh.chat.room", ChatMessage(room="room", speaker="s", content=str(n))))
                index.add(decoded(1000 + n, "mesh.work.echo.anon", TaskRequested(capability="echo", task_id=f"t{n}",
                                                                                 input=tiny)))  # fmt: skip
            return index

        index, held = held_by(build)
        assert index.dropped > 0 and held < 1.3 * self.BOUND  # 24 times the JSON's bound before

    def test_a_later_request_keeps_its_own_input_when_the_first_is_dropped(self) -> None:
        index = LogIndex(max_events=3)
        index.add(decoded(1, "mesh.work.first.anon", TaskRequested(capability="first", task_id="t", input=[1])))
        index.add(decoded(2, "mesh.task.first.anon.t", TaskFailed(task_id="t", agent="a", attempt=1, capability="first",
                                                                  error=ErrorInfo(type="E", message="no"))))  # fmt: skip
        index.add(decoded(3, "mesh.work.second.anon", TaskRequested(capability="second", task_id="t", input=[2])))
        index.add(decoded(4, "mesh.chat.room", ChatMessage(room="room", speaker="s", content="x")))  # drops seq 1
        assert 1 not in index.records and index.tasks.tasks["t"].input == [2]

    def test_workflow_data_leaves_with_its_events(self) -> None:
        spec = {"steps": {"a": {"capability": "echo", "input": "$input"}}}
        index = LogIndex(max_events=3)
        index.add(decoded(1, "mesh.flow.w", FlowStarted(workflow_id="w", name="n", spec=spec, input={"big": 1})))
        index.add(decoded(2, "mesh.flow.w", FlowStepCompleted(workflow_id="w", step="a", task_id="w-a", output=[3])))
        index.add(decoded(3, "mesh.flow.w", FlowCompleted(workflow_id="w", output=[4])))
        view = index.workflows.workflows["w"]
        assert view.input == {"big": 1} and view.steps["a"].output == [3]
        index.add(decoded(4, "mesh.chat.room", ChatMessage(room="room", speaker="s", content="x")))
        index.add(decoded(5, "mesh.chat.room", ChatMessage(room="room", speaker="s", content="y")))
        assert (view.input, view.spec, view.steps["a"].input) == (NotHeld(1),) * 3
        assert view.steps["a"].output == NotHeld(2) and view.output == [4] and view.status == "completed"


class TestPages:
    def test_two_owners_tasks_under_one_id_have_a_page_each(self) -> None:
        """Each owner's task links to its own page (by its key), which shows its own lifecycle;
        the id alone names both, and that page links to each."""
        index = LogIndex()
        index.extend(task_events("t1", 1, "c1", owner="UALICE") + task_events("t1", 4, "c2", owner="UBOB")[:2])
        listing = tasks_page(index, {}, 1).body
        assert 'href="/tasks/UALICE.t1"' in listing and 'href="/tasks/UBOB.t1"' in listing
        alice, bob = task_page(index, "UALICE.t1"), task_page(index, "UBOB.t1")
        assert alice is not None and bob is not None
        assert "UALICE" in alice.body and "completed" in alice.body
        assert "UBOB" in bob.body and "completed" not in bob.body  # not Alice's outcome
        both = task_page(index, "t1")
        assert both is not None and 'href="/tasks/UALICE.t1"' in both.body and 'href="/tasks/UBOB.t1"' in both.body

    def test_values_from_the_log_are_escaped(self) -> None:
        """A task id or type made of HTML shows as text, never as markup."""
        index = LogIndex()
        index.extend(task_events("<script>alert(1)</script>", 1, "<b>c</b>"))
        html = tasks_page(index, {}, 1).body + events_page(index, EventQuery(), {}, 1).body
        assert "<script>" not in html and "<b>c</b>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    def test_an_id_cannot_pass_for_another(self) -> None:
        """Bidirectional controls in a value show as escapes, control characters as U+FFFD
        (`invoice-\u202e1337-lanif` displayed as `invoice-final-7331`: review Z)."""
        index = LogIndex()
        index.extend(task_events("invoice-\u202e1337-lanif", 1, "c\x1b[2Jc"))
        html = tasks_page(index, {}, 1).body + events_page(index, EventQuery(), {}, 1).body
        assert "\u202e" not in html and "invoice-\\u202e1337-lanif" in html and "\x1b" not in html

    def test_a_bad_filter_is_one_line(self) -> None:
        """A subject that is not a NATS filter, or a time that is not RFC 3339, is refused and named."""
        with pytest.raises(BadParameter, match=re.escape("subject 'mesh..task' is not a subject filter")):
            _event_query({"subject": "mesh..task"})
        with pytest.raises(BadParameter, match="until 'soon' is not an RFC 3339 time"):
            _event_query({"until": "soon"})
        assert _event_query({"subject": "mesh.task.>", "since": "2026-12-02T10:00:00Z"}).subject == "mesh.task.>"


class TestDeadLetterPreview:
    def letter(self, **fields: Any) -> DeadLettered:
        base: dict[str, Any] = {"subject": "mesh.work.x", "reason": "not_json", "error": "no", "raw": "", "size": 0}
        return DeadLettered(**{**base, **fields})

    def test_the_original_bytes_are_shown_as_text(self) -> None:
        """The quoted original shows as text, cut to the width, with undecodable bytes replaced."""
        raw = b"not json \xff" + b"x" * 500
        shown = preview(self.letter(raw=base64.b64encode(raw).decode(), size=len(raw)), width=20)
        assert shown == "not json \ufffdxxxxxxxxxx…"
        assert preview(self.letter(raw="%%%", size=3)) == "(the quoted bytes are not base64)"
        assert preview(self.letter(size=9, sha256="ab" * 32)).startswith("(not quoted: 9 bytes, sha256 abab")


class TestHub:
    async def test_a_page_that_falls_behind_is_told_to_reload(self) -> None:
        """A live page's queue never grows past its bound: when full, what waits becomes one reset."""
        hub = Hub(max_pages=1, queue=3)
        page = hub.open()
        assert page is not None and hub.open() is None  # the second page is refused
        for n in range(10):
            hub.send("mesh", {"n": n})
        assert page.qsize() <= 3
        messages = [page.get_nowait() for _ in range(page.qsize())]
        assert any(m.startswith(b"event: reset") for m in messages)
        hub.shut()
        assert await asyncio.wait_for(page.get(), 1) == b""


class TestHostNames:
    def test_the_host_header_is_read_as_a_name(self) -> None:
        """Host headers with a port, an IPv6 literal or none give the bare name the console checks."""
        from mesh.console.server import LOCAL_NAMES, _host_name

        assert [_host_name(h) for h in ("127.0.0.1:8300", "[::1]:8300", "localhost", "evil.example:8300")] == [
            "127.0.0.1", "::1", "localhost", "evil.example"]  # fmt: skip
        assert "evil.example" not in LOCAL_NAMES


class TestTimelineFrame:
    async def test_built_off_the_event_loop_and_once_per_state_of_its_id(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The timeline page of an id is built in a thread (one id may hold any number of
        events: 100,000 under one correlation id held every page of the console for seconds),
        and built again only once its events change (its frames reload it as events land)."""
        import threading

        from mesh.console import server
        from mesh.console.source import FileSource

        built: list[str] = []
        real = server.render_html

        def render(timeline: Any) -> str:
            built.append(threading.current_thread().name)
            return real(timeline)

        monkeypatch.setattr(server, "render_html", render)
        index = LogIndex()
        index.extend(task_events("t1", 1, "c1"))
        console = server.Console(index, FileSource("unread.jsonl"))
        first = await console._timeline_page("c1")
        assert await console._timeline_page("c1") == first and len(built) == 1
        index.extend(task_events("t2", 4, "c1"))
        assert await console._timeline_page("c1") != first and len(built) == 2
        assert threading.main_thread().name not in built
        index.extend(task_events("t3", 7, "c1"))
        pages = await asyncio.gather(*(console._timeline_page("c1") for _ in range(12)))  # asked at once
        assert len(set(pages)) == 1 and len(built) == 3  # built once, not once per ask (review C: 12 builds)

    async def test_no_more_than_a_few_wait_to_be_built(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each timeline asked for was built in turn, its client there or not (review D: 34
        requests of clients gone held 362 MiB): past `TIMELINES_WAITING`, a 503 at once."""
        import threading

        from mesh.console import server
        from mesh.console.source import FileSource

        go = threading.Event()
        real = server.render_html

        def render(timeline: Any) -> str:
            go.wait(10)
            return real(timeline)

        monkeypatch.setattr(server, "render_html", render)
        index = LogIndex()
        roots = [f"c{n}" for n in range(server.TIMELINES_WAITING + 2)]
        for n, root in enumerate(roots):
            index.extend(task_events(f"t{n}", 3 * n + 1, root))
        console = server.Console(index, FileSource("unread.jsonl"))
        asked = asyncio.gather(*(console._timeline_page(root) for root in roots), return_exceptions=True)
        go.set()
        pages = await asyncio.wait_for(asked, 30)
        assert all(isinstance(page, str) for page in pages[: server.TIMELINES_WAITING])
        assert all(isinstance(page, MeshError) for page in pages[server.TIMELINES_WAITING :])


class TestProjectionsPage:
    def test_a_large_value_is_cut_before_it_is_indented(self) -> None:
        """Indenting 20 MB took seconds of the event loop on every view (review Z): past the
        limit only the start of the compact JSON is shown."""
        small, large = {"a": [1, 2]}, [[n, n] for n in range(100_000)]
        assert bounded_json(small, 100) == '{\n  "a": [\n    1,\n    2\n  ]\n}'
        shown = bounded_json(large, 1000, ": pick one")
        assert shown.startswith("[[0,0],[1,1],") and shown.endswith(f"… cut at 1,000 bytes of {len(msgspec.json.encode(large)):,} (compact): pick one")
        assert len(shown) < 1100

    async def test_a_few_states_are_folded_at_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each fold holds a state of the whole log: 100 positions asked at once took the
        console from 126 to 944 MB (review Z). At most `FOLDS_AT_ONCE` run together; the
        tasks state counts its tasks as its entries."""
        import threading

        from mesh.console import travel
        from mesh.console.source import FileSource

        lock, inside, most = threading.Lock(), [0], [0]
        entered, go = threading.Semaphore(0), threading.Event()
        real = travel.state_from_records

        def fold(*args: Any) -> Any:
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            entered.release()
            go.wait(10)  # held until the test has seen how many got in
            try:
                return real(*args)
            finally:
                with lock:
                    inside[0] -= 1

        monkeypatch.setattr(travel, "state_from_records", fold)
        states = travel.Travel(tasks_index(40), FileSource("unread.jsonl"))
        positions = [3 * n for n in range(1, travel.FOLDS_WAITING + 5)]  # more than may wait
        asked = asyncio.gather(*(states.state_at("tasks", at) for at in positions), return_exceptions=True)
        for _ in range(travel.FOLDS_AT_ONCE):
            assert await asyncio.to_thread(entered.acquire, timeout=10)
        one_more = await asyncio.to_thread(entered.acquire, timeout=0.5)  # a bounded wait for what must not come
        go.set()
        shown = await asyncio.wait_for(asked, 30)
        assert not one_more and most[0] == travel.FOLDS_AT_ONCE
        admitted, refused = shown[: travel.FOLDS_WAITING], shown[travel.FOLDS_WAITING :]
        assert [s.entries for s in admitted] == list(range(1, travel.FOLDS_WAITING + 1))  # type: ignore[union-attr]
        assert all(isinstance(r, MeshError) and "being folded" in str(r) for r in refused)  # review D: 60 asks, 60 folds


    async def test_a_fold_whose_asker_left_still_counts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A fold runs on in its thread when its request is cancelled: it keeps its place among
        `FOLDS_WAITING` (review D: 60 clients that asked and left made 53 folds)."""
        import threading

        from mesh.console import travel
        from mesh.console.source import FileSource

        entered, go = threading.Semaphore(0), threading.Event()
        real = travel.state_from_records

        def fold(*args: Any) -> Any:
            entered.release()
            go.wait(10)
            return real(*args)

        monkeypatch.setattr(travel, "state_from_records", fold)
        states = travel.Travel(tasks_index(20), FileSource("unread.jsonl"))
        left = asyncio.ensure_future(states.state_at("tasks", 1))
        assert await asyncio.to_thread(entered.acquire, timeout=10)
        left.cancel()  # its asker went away; its fold did not
        asked = asyncio.gather(*(states.state_at("tasks", at) for at in range(2, 2 + travel.FOLDS_WAITING)),
                               return_exceptions=True)  # fmt: skip
        go.set()
        shown = await asyncio.wait_for(asked, 30)
        assert sum(isinstance(s, MeshError) for s in shown) == 1  # the one past the cap, counting the fold left


    async def test_keys_of_one_state_share_its_fold(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A key asked anew folded the whole state again, so one client asking keys kept every
        fold slot busy (review E). Now every key of one position is a pick from one fold, kept
        for the next key; more keys than `FOLDS_WAITING` are all answered."""
        from mesh.console import travel
        from mesh.console.source import FileSource

        folds = []
        real = travel.state_from_records

        def fold(*args: Any) -> Any:
            folds.append(args)
            return real(*args)

        monkeypatch.setattr(travel, "state_from_records", fold)
        states = travel.Travel(tasks_index(40), FileSource("unread.jsonl"))
        keys = [f"t{n}" for n in range(travel.FOLDS_WAITING + 12)]
        shown = await asyncio.wait_for(asyncio.gather(*(states.state_at("tasks", 60, key) for key in keys)), 30)
        assert len(folds) == 1
        assert all(f'"task_id": "t{n}"' in s.text for n, s in enumerate(shown))
        later = await states.state_at("tasks", 60, "t19")  # asked after the fold ended: the state was kept
        assert len(folds) == 1 and '"task_id": "t19"' in later.text
        with pytest.raises(KeyError):
            await states.state_at("tasks", 60, "nobody")
        await states.state_at("tasks", 30, "t1")  # another position: its own fold
        assert len(folds) == 2


class TestFileSource:
    @staticmethod
    def line(seq: int, task: str, event_id: str) -> str:
        event = {"specversion": "1.0", "id": event_id, "source": "mesh://x", "type": "mesh.task.requested",
                 "time": "2026-12-04T17:42:52Z", "data": {"capability": "echo", "task_id": task, "input": 1}}  # fmt: skip
        return msgspec.json.encode({"seq": seq, "subject": "mesh.work.echo.anon", "event": event}).decode() + "\n"

    async def test_a_file_out_of_log_order_is_refused_naming_the_line(self, tmp_path: Any) -> None:
        """Exports concatenated showed fewer tasks than they hold, without a word (review Z)."""
        from mesh.console.source import FileSource
        from mesh.errors import MeshError

        in_order = tmp_path / "ordered.jsonl"
        in_order.write_text(self.line(1, "a", "ra") + self.line(2, "b", "rb") + self.line(2, "b", "rb"))  # a line again: kept once
        index = LogIndex()
        await FileSource(in_order).load(index)
        assert [r.seq for r in index.records.values()] == [1, 2] and len(index.tasks.tasks) == 2
        for lines, said in ((self.line(2, "b", "rb") + self.line(1, "a", "ra"), "seq 1 (ra) comes after seq 2"),
                            (self.line(1, "a", "ra") + self.line(1, "b", "rb"), "seq 1 (rb) comes after seq 1")):  # fmt: skip
            unordered = tmp_path / "unordered.jsonl"
            unordered.write_text(lines)
            with pytest.raises(MeshError, match=re.escape(said)):
                await FileSource(unordered).load(LogIndex())


async def test_a_live_load_measures_what_its_decoded_events_could_take() -> None:
    """The stream's bytes counted three times fit the bound, so nothing was measured, and the
    load decoded the whole range before trimming it: data of tiny containers took it to 6
    times `--max-mb` (review D). Now a byte counts as much as `decoded_size` may make of it."""
    from nats.js.api import StreamState

    from mesh.console.source import MOST_PER_BYTE, _may_exceed

    class Unasked:
        @property
        def js(self) -> Any:
            raise AssertionError("the server was asked: the stream alone may exceed the bound")

    stream = StreamState(messages=1000, bytes=2**20, first_seq=1, last_seq=1000, consumer_count=0)
    bound = 16 * 2**20  # 16 times the stream's bytes: within three times, not within `MOST_PER_BYTE`
    assert MOST_PER_BYTE * stream.bytes > bound > 3 * stream.bytes + 1000 * 1024
    assert await _may_exceed(Unasked(), stream, max_events=200_000, max_bytes=bound)  # type: ignore[arg-type]
