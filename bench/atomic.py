"""Two events stored per hand-off: two acknowledged publishes vs one JetStream atomic batch
(a design question of issue #12; numbers only, no target).

`python -m bench atomic [--pairs 10000] [--in-flight 64] [--runs 4]`

A hop of a hand-off chain stores the next step's request and the step's `handed_off`, each an
acknowledged publish. nats-server 2.12+ can store several messages as one atomic batch
(`allow_atomic` on the stream; `Nats-Batch-Id`, `Nats-Batch-Sequence`, `Nats-Batch-Commit`
headers) with one acknowledgement. Both sides here are plain nats-py on one connection, on a
stream of their own on a fresh server, ``--in-flight`` pairs at a time, each message with its
`Nats-Msg-Id`:
- two acknowledged: publish the first, await its ack, publish the second, await its ack;
- atomic batch: the first without a reply, the second with the commit header and a reply,
  await that one ack.
Printed per run: pairs/s and this process's CPU µs per pair. Then what the server answers a
batch whose message ids are stored already (a retried hop would send that).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from bench.harness import Bench, count, median

BODY = b'{"specversion":"1.0","id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","type":"mesh.task.requested",' \
       b'"source":"mesh://bench","data":{"task_id":"t","capability":"work","input":{"n":1}}}'  # fmt: skip


def cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


class Publisher:
    """Publishes with a reply on one inbox subscription and awaits each acknowledgement."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.inbox = nc.new_inbox() + "."
        self.waiting: dict[str, asyncio.Future[bytes]] = {}
        self.count = 0
        self.last_batch = -1  # the index of the last pair sent as a batch

    async def start(self) -> None:
        await self.nc.subscribe(self.inbox + "*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        future = self.waiting.pop(msg.subject[len(self.inbox) :], None)
        if future is not None and not future.done():
            future.set_result(msg.data)

    async def acked(self, subject: str, headers: dict[str, str]) -> bytes:
        self.count += 1
        token = str(self.count)
        future = self.waiting[token] = asyncio.get_running_loop().create_future()
        await self.nc.publish(subject, BODY, reply=self.inbox + token, headers=headers)
        return await asyncio.wait_for(future, 30)

    async def two_acked(self, i: int) -> bytes:
        first = await self.acked(f"atomic.work.{i}", {"Nats-Msg-Id": f"w{i}"})
        return first + await self.acked(f"atomic.task.{i}", {"Nats-Msg-Id": f"t{i}"})

    async def batch(self, i: int) -> bytes:
        self.last_batch = i
        batch = {"Nats-Batch-Id": f"b{i}"}
        await self.nc.publish(f"atomic.work.{i}", BODY, headers={"Nats-Msg-Id": f"bw{i}", **batch,
                                                                 "Nats-Batch-Sequence": "1"})  # fmt: skip
        return await self.acked(f"atomic.task.{i}", {"Nats-Msg-Id": f"bt{i}", **batch, "Nats-Batch-Sequence": "2",
                                                     "Nats-Batch-Commit": "1"})  # fmt: skip


async def run(url: str, args: argparse.Namespace) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name="ATOMIC", subjects=["atomic.>"], allow_atomic=True))
        publisher = Publisher(nc)
        await publisher.start()
        gate = asyncio.Semaphore(args.in_flight)
        sides: dict[str, Callable[[int], Awaitable[bytes]]] = {
            "two acknowledged": publisher.two_acked, "atomic batch": publisher.batch}  # fmt: skip
        rates: dict[str, list[float]] = {name: [] for name in sides}
        cpus: dict[str, list[float]] = {name: [] for name in sides}

        async def one(side: Callable[[int], Awaitable[bytes]], i: int) -> None:
            async with gate:
                answer = await side(i)
                if b'"error"' in answer:
                    raise RuntimeError(f"pair {i}: {answer!r}")

        for run_no in range(args.runs):
            order = list(sides) if run_no % 2 == 0 else list(reversed(sides))
            for name in order:
                first = (run_no * 2 + list(sides).index(name)) * args.pairs
                started, used = time.perf_counter(), cpu()
                await asyncio.gather(*(one(sides[name], first + i) for i in range(args.pairs)))
                rates[name].append(args.pairs / (time.perf_counter() - started))
                cpus[name].append((cpu() - used) / args.pairs * 1e6)
                print(f"  run {run_no + 1}/{args.runs} {name:17s}: {rates[name][-1]:9,.0f} pairs/s  "
                      f"CPU {cpus[name][-1]:6.1f} µs per pair (this process)", flush=True)  # fmt: skip
        for name in sides:
            print(f"{name:17s}: median {median(rates[name]):9,.0f} pairs/s, {median(cpus[name]):6.1f} µs CPU per pair")
        again = await publisher.batch(publisher.last_batch)  # its ids are stored already: a retried hop
        print(f"a batch sent again: {again.decode(errors='replace')}")
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench atomic", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=count, default=10_000, help="pairs per side and run (default 10,000)")
    parser.add_argument("--in-flight", type=count, default=64, help="pairs at a time (default 64)")
    parser.add_argument("--runs", type=count, default=4, help="runs, the order alternating (default 4)")
    args = parser.parse_args(argv)
    with Bench("atomic") as bench:
        asyncio.run(run(bench.url, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
