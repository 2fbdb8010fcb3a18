"""The raw baseline's worker: plain nats-py, no project code, the way a competent nats-py
user writes a JetStream work consumer.

    python -m bench.raw_worker --nats URL --capability echo|latency [--concurrency 64]

- binds a durable pull consumer `raw-work-<capability>` on `raw.work.<capability>`
  (`js.pull_subscribe`, explicit ack, created here if missing);
- loops `psub.fetch(free slots, timeout=5)` and runs each message as its own asyncio task,
  at most `--concurrency` at once (the same in-flight window the mesh runner keeps);
- per message: `json.loads` the task, run the handler (echo: return the input; latency:
  `time.time_ns() - input["sent"]`), `js.publish` a JSON completion to
  `raw.done.<task id>` with a `Nats-Msg-Id`, and only then `msg.ack()`;
- SIGTERM/SIGINT: stop fetching, let in-flight messages finish, drain the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

STREAM = "RAW"


def work_subject(capability: str) -> str:
    return f"raw.work.{capability}"


def done_subject(task_id: str) -> str:
    return f"raw.done.{task_id}"


def durable(capability: str) -> str:
    return f"raw-work-{capability}"


def handler_for(capability: str) -> Callable[[Any], Any]:
    if capability == "echo":
        return lambda value: value
    if capability == "latency":  # ns from the requester's wall-clock send time to this handler starting
        return lambda value: time.time_ns() - value["sent"]
    raise SystemExit(f"unknown capability {capability!r}")


async def serve(url: str, capability: str, concurrency: int) -> None:
    nc = await nats.connect(url, name=f"raw-worker-{capability}")
    js = nc.jetstream()
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=5, max_ack_pending=1000
    )
    psub = await js.pull_subscribe(work_subject(capability), durable=durable(capability), stream=STREAM, config=config)
    handler = handler_for(capability)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    in_flight: set[asyncio.Task[None]] = set()
    slot_free = asyncio.Event()

    async def handle(msg: Any) -> None:
        task = json.loads(msg.data)
        output = handler(task["input"])
        body = json.dumps({"id": task["id"], "status": "completed", "output": output}).encode()
        await js.publish(done_subject(task["id"]), body, headers={"Nats-Msg-Id": f"{task['id']}/done"})
        await msg.ack()

    def finished(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        slot_free.set()

    async def pull() -> None:
        while not stop.is_set():
            free = concurrency - len(in_flight)
            if free <= 0:
                slot_free.clear()
                await slot_free.wait()
                continue
            try:
                msgs = await psub.fetch(free, timeout=5)
            except (NatsTimeoutError, asyncio.TimeoutError):
                continue
            for msg in msgs:
                task = asyncio.create_task(handle(msg))
                in_flight.add(task)
                task.add_done_callback(finished)

    puller = asyncio.create_task(pull())
    await stop.wait()
    puller.cancel()
    if in_flight:
        await asyncio.gather(*in_flight, return_exceptions=True)
    await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--capability", required=True, choices=["echo", "latency"])
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(serve(args.nats, args.capability, args.concurrency))


if __name__ == "__main__":
    main()
