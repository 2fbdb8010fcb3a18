"""A task event counts for a task only on its own subjects (`topics.tasks.task_place`), in
every reader people look at, as in the tasks projection (review AB): a client's
`mesh.task.failed` on `mesh.cancel.<id>` (a subject every client may write) turned a completed
task's bar red in the timeline and added a "failed" row to the console's task page, and a
request's capability was shown from its data instead of the work subject its agents serve."""

from __future__ import annotations

import pytest

from mesh.console.index import LogIndex
from mesh.console.pages import e
from mesh.console.views import task_page
from replay import build_timeline, render_html
from replay.labels import label, summarize
from topics.base import ErrorInfo, Event, html_text, visible
from topics.envelope import CloudEvent
from topics.record import Record
from topics.tasks import TaskCancelRequested, TaskClaimed, TaskCompleted, TaskFailed, TaskRequested, task_place

pytestmark = pytest.mark.unit

FORGED = ErrorInfo(type="PaymentError", message="card charged twice", retryable=False)


def record(seq: int, subject: str, data: Event, *, cause: str | None = None) -> Record:
    event = CloudEvent(specversion="1.0", id=f"e{seq}", source="mesh://agent/echo-1", type=data.TYPE,
                       time=f"2026-12-05T10:00:{seq:02d}Z", correlationid="c1", causationid=cause)  # fmt: skip
    return Record(seq=seq, subject=subject, event=event, data=data)


def completed_task(owner: str = "anon") -> list[Record]:
    return [
        record(1, f"mesh.work.echo.{owner}", TaskRequested(capability="echo", task_id="t9", input="hi")),
        record(2, f"mesh.task.echo.{owner}.t9", TaskClaimed(task_id="t9", agent="echo-1", attempt=1, request_seq=1),
               cause="e1"),  # fmt: skip
        record(3, f"mesh.task.echo.{owner}.t9",
               TaskCompleted(task_id="t9", agent="echo-1", attempt=1, output="hi", capability="echo", request_seq=1),
               cause="e1"),  # fmt: skip
    ]


def forged_failure(seq: int, subject: str) -> Record:
    return record(seq, subject, TaskFailed(task_id="t9", agent="echo-1", attempt=1, error=FORGED, capability="echo",
                                           request_seq=1), cause="e1")  # fmt: skip


class TestTaskPlace:
    @pytest.mark.parametrize(("subject", "data", "place"), [
        ("mesh.work.echo.anon", TaskRequested(capability="payments", task_id="t1"), ("echo", "anon", "t1")),
        ("mesh.work.echo.UALICE", TaskRequested(capability="echo"), ("echo", "UALICE", "e1")),  # its event id
        ("mesh.task.echo.anon.t1", TaskRequested(capability="echo", task_id="t1"), ("echo", "anon", "t1")),  # a fork's copy
        ("mesh.task.echo.anon.t2", TaskRequested(capability="echo", task_id="t1"), None),
        ("mesh.task.echo.anon.t9", TaskCompleted(task_id="t9", agent="a", attempt=1), ("echo", "anon", "t9")),
        ("mesh.cancel.t9", TaskFailed(task_id="t9", agent="a", attempt=1, error=FORGED), None),
        ("mesh.task.echo.anon.t8", TaskCompleted(task_id="t9", agent="a", attempt=1), None),  # another task's subject
        ("mesh.task.echo.anon.t9", TaskCompleted(task_id="t9", agent="a", attempt=1, capability="payments"), None),
        ("mesh.work.echo.anon", TaskCompleted(task_id="t9", agent="a", attempt=1), None),
        ("mesh.cancel.t9", TaskCancelRequested(task_id="t9", token="x"), None),  # not a task's own event
    ])  # fmt: skip
    def test_a_task_event_counts_on_its_own_subjects_only(
        self, subject: str, data: Event, place: tuple[str, str, str] | None
    ) -> None:
        assert task_place(data, subject, "e1") == place


class TestTimeline:
    def test_a_failure_stored_off_the_tasks_subjects_leaves_its_bar_completed(self) -> None:
        records = [*completed_task(), forged_failure(4, "mesh.cancel.t9")]
        timeline = build_timeline(records, "t9")
        (task,) = [bar for bar in timeline.bars if bar.kind == "task"]
        assert (task.status, task.reason) == ("completed", "")
        forged = next(hop for hop in timeline.hops if hop.seq == 4)
        assert forged.label.startswith("not on its task's subjects: task t9 failed") and "echo t9" not in forged.label
        assert all(mark.label == forged.label for mark in task.marks)  # at most a mark citing it, saying so
        page = render_html(timeline)
        assert '<g class="bar task completed"' in page and '<g class="bar task failed"' not in page

    def test_the_first_final_outcome_stands_and_a_later_one_is_a_mark(self) -> None:
        """As the tasks projection: a completed task stays completed, whatever comes after."""
        records = [*completed_task(), forged_failure(4, "mesh.task.echo.anon.t9")]
        (task,) = [bar for bar in build_timeline(records, "t9").bars if bar.kind == "task"]
        assert task.status == "completed"
        assert [mark.seq for mark in task.marks] == [4]

    def test_a_retryable_failure_is_not_final(self) -> None:
        retry = ErrorInfo(type="Busy", message="try again", retryable=True)
        records = [
            *completed_task()[:2],
            record(3, "mesh.task.echo.anon.t9", TaskFailed(task_id="t9", agent="echo-1", attempt=1, error=retry,
                                                             request_seq=1), cause="e1"),  # fmt: skip
            record(4, "mesh.task.echo.anon.t9", TaskCompleted(task_id="t9", agent="echo-2", attempt=2, output="hi",
                                                                request_seq=1), cause="e1"),  # fmt: skip
        ]
        (task,) = [bar for bar in build_timeline(records, "t9").bars if bar.kind == "task"]
        assert task.status == "completed"

    def test_a_request_shows_the_capability_of_its_work_subject(self) -> None:
        request = record(1, "mesh.work.echo.anon", TaskRequested(capability="payments", task_id="t1"))
        assert summarize(request).startswith("echo task t1") and "payments" not in summarize(request)
        assert label(request).startswith("echo t1 requested")
        (task,) = [bar for bar in build_timeline([request], "t1").bars if bar.kind == "task"]
        assert task.label.startswith("echo t1")

    def test_a_request_off_a_work_subject_opens_no_bar(self) -> None:
        request = record(1, "mesh.chat.room", TaskRequested(capability="echo", task_id="t1"))
        timeline = build_timeline([request], "t1")
        assert [bar.kind for bar in timeline.bars if bar.kind == "task"] == []
        assert summarize(request) == "not on its task's subjects: task t1"
        assert label(request).startswith("not on its task's subjects: task t1 requested")


class TestConsoleTaskPage:
    def test_the_attempts_table_holds_only_the_tasks_own_events(self) -> None:
        index = LogIndex()
        index.extend([*completed_task("UVICTIM"), forged_failure(4, "mesh.cancel.t9")])
        page = task_page(index, "UVICTIM.t9")
        assert page is not None and "completed" in page.body
        assert "PaymentError" not in page.body and "card charged twice" not in page.body

    def test_a_request_is_shown_for_the_capability_its_subject_names(self) -> None:
        index = LogIndex()
        index.extend([record(1, "mesh.work.echo.anon", TaskRequested(capability="payments", task_id="t1"))])
        page = task_page(index, "t1")
        assert page is not None and "requested for echo" in page.body and "requested for payments" not in page.body


class TestBidirectionalControls:
    NAME = "invoice-\u202e1337-lanif"

    def test_every_reader_shows_them_as_escapes(self) -> None:
        assert visible(self.NAME) == "invoice-\\u202e1337-lanif"
        assert html_text(self.NAME) == e(self.NAME) == "invoice-\\u202e1337-lanif"
        assert html_text("<b>\x1b\n") == "&lt;b&gt;\ufffd\n"  # markup escaped, an escape shown, a newline kept

    def test_the_timeline_page_holds_none(self) -> None:
        claim = TaskClaimed(task_id="t9", agent=self.NAME, attempt=1, request_seq=1)
        records = [completed_task()[0], record(2, "mesh.task.echo.anon.t9", claim, cause="e1")]
        page = render_html(build_timeline(records, "t9"))
        assert "\u202e" not in page and "\\u202e" in page
