"""Workload W's raw baseline: one step of the `plan -> work -> review` pipeline in plain
nats-py, no project code, the way a competent nats-py user writes a pipelined JetStream step.

    python -m bench.raw_pipeline --nats URL --step plan|work|review [--window 64]

- binds the durable pull consumer `raw-pipe-<step>` on `raw.work.<step>` (stream `RAW`,
  explicit ack, created here if missing);
- callback-driven pull: one private inbox subscription receives every message, and pull
  requests (`$JS.API.CONSUMER.MSG.NEXT`, with expiry and idle heartbeat) keep a credit of
  up to `--window` messages: requested, or held until their publish is acknowledged;
- per message: `json.loads` the task, the no-op handler (the input is the output), then
  `js.publish_async` of the next step's JSON task to `raw.work.<next>` (review: the
  completion `{"id", "status", "output"}` to `raw.done.<task id>`, what `bench.tasks.RawRequester`
  waits for), each with a `Nats-Msg-Id`; the callback goes on to the next message at once,
  and the input is acknowledged when that publish's acknowledgement arrives (nak'ed if none
  comes within 30 s: nats-py's future never resolves for a rejected message, issue #985);
- SIGTERM/SIGINT: stop pulling, wait for the acknowledgements still due, drain the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck

from bench.raw_worker import STREAM, done_subject, work_subject

NEXT = {"plan": "work", "work": "review", "review": None}
PUBLISH_ACK_TIMEOUT = 30.0


def durable(step: str) -> str:
    return f"raw-pipe-{step}"


class Step:
    """One pipeline step: the pull, the hand-on to the next step, the acknowledgements."""

    def __init__(self, nc: Client, step: str, window: int) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.step = step
        self.window = window
        self.credit = 0  # messages requested and not yet received
        self.held = 0  # messages received and not yet acknowledged
        self.inbox = nc.new_inbox()
        self.next_request = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{durable(step)}"
        self.stopping = False
        self.settling: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        config = ConsumerConfig(
            durable_name=durable(self.step), filter_subject=work_subject(self.step), deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=5, max_ack_pending=1000,
        )  # fmt: skip
        await self.js.add_consumer(STREAM, config)
        await self.nc.subscribe(self.inbox, cb=self.receive)
        await self.top_up()

    async def top_up(self) -> None:
        want = self.window - self.held - self.credit
        if self.stopping or want < max(1, self.window // 2):
            return
        self.credit += want
        request = {"batch": want, "expires": 30_000_000_000, "idle_heartbeat": 5_000_000_000}
        await self.nc.publish(self.next_request, json.dumps(request).encode(), reply=self.inbox)

    async def receive(self, msg: Msg) -> None:
        if msg.headers and "Status" in msg.headers and not msg.reply:  # the server's word on a pull
            if msg.headers["Status"] != "100":  # not a heartbeat: the pull ended with this many unsent
                self.credit = max(0, self.credit - int(msg.headers.get("Nats-Pending-Messages", self.credit)))
                await self.top_up()
            return
        self.credit -= 1
        self.held += 1
        task = json.loads(msg.data)
        output = task["input"]  # the no-op handler
        following = NEXT[self.step]
        if following is None:
            subject = done_subject(task["id"])
            body = {"id": task["id"], "status": "completed", "output": output}
        else:
            subject, body = work_subject(following), {"id": task["id"], "input": output}
        ack = await self.js.publish_async(subject, json.dumps(body).encode(),
                                          headers={"Nats-Msg-Id": f"{task['id']}/{self.step}"})  # fmt: skip
        settle = asyncio.create_task(self.settle(msg, ack))
        self.settling.add(settle)
        settle.add_done_callback(self.settling.discard)

    async def settle(self, msg: Msg, ack: asyncio.Future[PubAck]) -> None:
        """Acknowledge the input once the next step's message is stored, never before."""
        try:
            await asyncio.wait_for(ack, PUBLISH_ACK_TIMEOUT)
        except Exception:
            await msg.nak()
        else:
            await msg.ack()
        finally:
            self.held -= 1
            await self.top_up()

    async def stop(self) -> None:
        self.stopping = True
        if self.settling:
            await asyncio.gather(*self.settling, return_exceptions=True)


async def serve(url: str, step: str, window: int) -> None:
    nc = await nats.connect(url, name=f"raw-pipe-{step}")
    worker = Step(nc, step, window)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await worker.start()
    await stop.wait()
    await worker.stop()
    await nc.drain()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--step", required=True, choices=list(NEXT))
    parser.add_argument("--window", type=int, default=64, help="messages held or requested at most (default 64)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.nats, args.step, args.window))


if __name__ == "__main__":
    main()
