"""Rebuilding projections from a large log vs reading it raw (issue #3, replay).

`python -m bench.rebuild [--events 200000] [--runs 3]`

1. A fresh nats-server; a log of N CloudEvents written with `js.publish_async` in windows
   (each with `Nats-Msg-Id`), a realistic mix: workflows with steps, tasks with claim,
   progress, model call and completion, board writes, votes, chat turns.
2. Raw baseline (plain nats-py + msgspec, no project code): an ephemeral no-ack pull
   consumer read by a callback on a private inbox with pulls of 5000, the stream sequence
   parsed from the reply subject, and `msgspec.json.Decoder(CloudEvent)` on every message.
3. Mesh: `replay.rebuild_all` (the replay reader with its completeness checks, the typed
   decode of envelope and data, and a fold of every ready projection), from the same stream.
4. Mesh from a file: `replay.export_log` writes the log as JSONL once; then `rebuild_file`
   of every projection (and `read_file` alone: every Record whole, no fold).
5. Memory: tracemalloc of the Records `read_log` / `read_file` keep, per 100k events.

Runs alternate which side goes first; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.harness import Bench, Row, count, print_table
from mesh.bus.client import MSG_ID, Mesh
from replay import export_log, read_file, read_log, rebuild_all, rebuild_file
from topics import subjects
from topics.envelope import CloudEvent, encode_envelope, new_event_id, now_rfc3339
from topics.registry import encode_data
from topics.tasks import TaskClaimed, TaskCompleted, TaskProgress, TaskRequested

FILE_TARGET = 300_000  # events/s, read + fold every projection from a JSONL file
JETSTREAM_TARGET = 0.6  # mesh rebuild / raw read-and-decode


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.rebuild", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=count, default=200_000, help="events in the log (default 200000)")
    parser.add_argument("--runs", type=count, default=3, help="runs per side; the median is reported (default 3)")
    return parser.parse_args(argv)


# -- the log -------------------------------------------------------------------------------


def _event(subject: str, data: Any, correlation: str, cause: str | None, source: str) -> tuple[str, bytes, str]:
    event = CloudEvent(specversion="1.0", id=new_event_id(), source=source, type=data.TYPE, time=now_rfc3339(),
                       correlationid=correlation, causationid=cause,
                       traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                       data=msgspec.Raw(encode_data(data)))  # fmt: skip
    return subject, encode_envelope(event), event.id


def workload(n: int) -> Iterator[tuple[str, bytes, str]]:
    """`n` events: workflows of two steps (each a task with claim, progress, model call and
    completion), board writes, a vote, chat turns."""
    from topics.board import BoardWritten
    from topics.calls import LlmCalled
    from topics.chat import ChatMessage
    from topics.flows import FlowCompleted, FlowStarted, FlowStepCompleted, FlowStepScheduled
    from topics.votes import VoteCast, VoteDecided, VoteProposed

    made = 0
    w = 0
    spec = {"steps": {"research": {"capability": "research"}, "write": {"capability": "write", "after": ["research"]}}}
    while True:
        wf, agent = f"wf-{w}", f"mesh://agent/worker-{w % 7}"
        batch = [_event(subjects.flow(wf), FlowStarted(workflow_id=wf, name="report", spec=spec, input={"n": w}), wf, None,
                        "mesh://agent/orchestrator")]  # fmt: skip
        for step in ("research", "write"):
            task = f"{wf}-{step}"
            batch += [
                _event(subjects.flow(wf), FlowStepScheduled(workflow_id=wf, step=step, task_id=task), wf, None, agent),
                _event(subjects.work(step, "orchestrator"), TaskRequested(capability=step, task_id=task, input={"topic": f"t{w}"}), wf,
                       None, "mesh://agent/orchestrator"),
                _event(subjects.task(step, "orchestrator", task), TaskClaimed(task_id=task, agent=agent[13:], attempt=1), wf, None, agent),
                _event(subjects.task(step, "orchestrator", task), TaskProgress(task_id=task, agent=agent[13:], attempt=1, message="working"),
                       wf, None, agent),
                _event(subjects.llm("worker", task), LlmCalled(agent="worker", task_id=task, call_index=0,
                       model="gpt-4o-mini", request={"messages": [{"role": "user", "content": f"notes on t{w}"}]},
                       response={"id": f"c-{w}", "choices": [{"message": {"content": "three short notes"}}]},
                       usage={"input_tokens": 12, "output_tokens": 40}, latency_ms=420.5), task, None, agent),
                _event(subjects.task(step, "orchestrator", task), TaskCompleted(task_id=task, agent=agent[13:], attempt=1,
                       output={"notes": f"notes on t{w}", "words": 42}, capability=step), wf, None, agent),
                _event(subjects.flow(wf), FlowStepCompleted(workflow_id=wf, step=step, task_id=task, output={"ok": True}),
                       wf, None, "mesh://agent/orchestrator"),
            ]  # fmt: skip
        batch.append(_event(subjects.flow(wf), FlowCompleted(workflow_id=wf, output={"done": w}), wf, None, agent))
        key = f"k{w % 500}"
        batch.append(_event(subjects.board("facts", key), BoardWritten(board="facts", key=key, value={"w": w}, author=agent),
                            wf, None, agent))  # fmt: skip
        proposal = f"p{w}"
        batch += [
            _event(subjects.proposal(proposal), VoteProposed(proposal_id=proposal, question="ship?", options=("yes", "no"),
                   voters=("a", "b", "c")), wf, None, agent),
            _event(subjects.ballot(proposal, "a"), VoteCast(proposal_id=proposal, voter="a", choice="yes"), wf, None, agent),
            _event(subjects.ballot(proposal, "b"), VoteCast(proposal_id=proposal, voter="b", choice="yes"), wf, None, agent),
            _event(subjects.proposal(proposal), VoteDecided(proposal_id=proposal, outcome="yes", tally={"yes": 2.0}),
                   wf, None, agent),
            _event(subjects.chat(f"room-{w % 20}"), ChatMessage(room=f"room-{w % 20}", speaker="a", content="agreed"),
                   wf, None, agent),
        ]  # fmt: skip
        for item in batch:
            yield item
            made += 1
            if made == n:
                return
        w += 1


async def write_log(url: str, n: int, window: int = 5000) -> tuple[float, int]:
    """Publish the workload; return (events/s, bytes)."""
    async with await Mesh.connect(url) as mesh:
        started, size = time.perf_counter(), 0
        pending: list[asyncio.Future[Any]] = []
        for subject, payload, event_id in workload(n):
            size += len(payload)
            pending.append(await mesh.js.publish_async(subject, payload, headers={MSG_ID: event_id}))
            if len(pending) >= window:
                await asyncio.wait_for(asyncio.gather(*pending), 60)
                pending = []
        await asyncio.wait_for(asyncio.gather(*pending), 60)
        return n / (time.perf_counter() - started), size


# -- raw baseline ----------------------------------------------------------------------------


async def raw_read(url: str, batch: int = 5000) -> tuple[float, int]:
    """Plain nats-py: read the whole stream and decode every envelope; return (events/s, count)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    decoder = msgspec.json.Decoder(CloudEvent)
    try:
        last = (await js.stream_info(subjects.STREAM)).state.last_seq
        started = time.perf_counter()
        info = await js.add_consumer(subjects.STREAM, ConsumerConfig(ack_policy=AckPolicy.NONE, mem_storage=True,
                                     deliver_policy=DeliverPolicy.ALL, num_replicas=1, inactive_threshold=30))  # fmt: skip
        pull = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM}.{info.name}"
        inbox = nc.new_inbox()
        done = asyncio.get_running_loop().create_future()
        state = {"credit": 0, "count": 0}
        events: list[CloudEvent] = []
        request = msgspec.json.encode({"batch": batch, "expires": 10_000_000_000})

        async def on_msg(msg: Msg) -> None:
            if not msg.reply:
                return
            state["credit"] -= 1
            seq = int(msg.reply.split(".")[5])
            events.append(decoder.decode(msg.data))
            state["count"] += 1
            if seq >= last:
                done.set_result(None)
            elif state["credit"] <= batch // 2:
                state["credit"] += batch
                await nc.publish(pull, request, reply=inbox)

        sub = await nc.subscribe(inbox, cb=on_msg)
        state["credit"] += batch
        await nc.publish(pull, request, reply=inbox)
        await asyncio.wait_for(done, 120)
        elapsed = time.perf_counter() - started
        await sub.unsubscribe()
        await js.delete_consumer(subjects.STREAM, info.name)
        return state["count"] / elapsed, state["count"]
    finally:
        await nc.close()


# -- the mesh side ----------------------------------------------------------------------------


async def mesh_rebuild(url: str) -> tuple[float, int]:
    """`rebuild_all` of every projection from JetStream, no snapshot; (events/s, events)."""
    async with await Mesh.connect(url, ensure=False) as mesh:
        started = time.perf_counter()
        built = await rebuild_all(mesh, use_snapshot=False)
        elapsed = time.perf_counter() - started
    folded = next(iter(built.values())).folded
    return folded / elapsed, folded


def file_rebuild(path: Path) -> tuple[float, float, int]:
    """(events/s read + fold every projection, events/s read only, events) from a JSONL file.

    The fold is `rebuild_file`: one pass, each block of lines decoded envelope and typed data
    together, each event fed to the handlers of the projections that handle its type.
    Read-only is `read_file` (every record whole)."""
    started = time.perf_counter()
    rebuilt = rebuild_file(path)
    folded = time.perf_counter() - started
    started = time.perf_counter()
    count = len(read_file(path).records)
    read_only = time.perf_counter() - started
    assert next(iter(rebuilt.values())).folded == count
    return count / folded, count / read_only, count


def retained(load: Callable[[], Any]) -> tuple[int, int]:
    """Bytes still allocated by what ``load()`` returns (tracemalloc), and how many events."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    found = load()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, len(found.records)


async def _retained_live(url: str) -> tuple[int, int]:
    async with await Mesh.connect(url, ensure=False) as mesh:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        found = await read_log(mesh)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return after - before, len(found.records)


async def run(bench: Bench, args: argparse.Namespace) -> list[Row]:
    rate, size = await write_log(bench.url, args.events)
    print(f"log: {args.events:,} events, {size / args.events:.0f} B/event on average, written at {rate:,.0f}/s")
    path = bench.tmp / "log.jsonl"
    async with await Mesh.connect(bench.url, ensure=False) as mesh:
        exported = await export_log(mesh, path)
    print(f"export: {exported.events:,} events to JSONL, {path.stat().st_size / 1e6:.0f} MB")
    raw_rates: list[float] = []
    mesh_rates: list[float] = []
    file_rates: list[float] = []
    file_read_rates: list[float] = []
    for n in range(args.runs):
        order = [("raw", raw_read), ("mesh", mesh_rebuild)]
        for side, fn in order if n % 2 == 0 else reversed(order):
            value, count = await fn(bench.url)
            assert count == args.events, f"{side} read {count} of {args.events} events"
            (raw_rates if side == "raw" else mesh_rates).append(value)
        folded, read_only, count = file_rebuild(path)
        assert count == args.events
        file_rates.append(folded)
        file_read_rates.append(read_only)
    live_bytes, live_count = await _retained_live(bench.url)
    file_bytes, file_count = retained(lambda: read_file(path))
    raw, ours = statistics.median(raw_rates), statistics.median(mesh_rates)
    rows = [
        Row("rebuild all projections from JetStream vs raw read+decode", ours, raw, "events/s",
            target=JETSTREAM_TARGET, runs={"mesh": mesh_rates, "raw": raw_rates}),
        Row("rebuild all projections from a JSONL file vs raw JetStream read", statistics.median(file_rates), raw,
            "events/s", runs={"mesh": file_rates}),
        Row(f"  same, against the {FILE_TARGET:,}/s target", statistics.median(file_rates), FILE_TARGET, "events/s",
            target=1.0),
        Row("read + decode a JSONL file (no fold) vs raw JetStream read", statistics.median(file_read_rates), raw,
            "events/s", runs={"mesh": file_read_rates}),
    ]  # fmt: skip
    print_table(rows)
    print(f"memory kept per 100k events: read_log {live_bytes / live_count * 1e5 / 2**20:.0f} MiB, "
          f"read_file {file_bytes / file_count * 1e5 / 2**20:.0f} MiB (tracemalloc, Records retained)")  # fmt: skip
    return rows


def measure(events: int = 200_000, runs: int = 3) -> list[Row]:
    """The whole benchmark on a fresh server; prints the table and returns its rows."""
    with Bench("rebuild") as bench:
        return asyncio.run(run(bench, argparse.Namespace(events=events, runs=runs)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = measure(args.events, args.runs)
    return 0 if all(row.passed is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
