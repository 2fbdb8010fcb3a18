"""A process that contends for a shared limit, for tests/test_limits.py. Prints JSON lines:
`{"ready": true}` once connected, then waits for a line on its standard input (the test writes
one to every worker at once, so they start contending together), then one line per slot held
or grant taken. (A core NATS message on `test.go` did that before; one worker in a few hundred
runs never started, so the start no longer depends on a message that can be missed.)

    python -m tests.limits_worker URL pool NAME SIZE ROUNDS HOLD_SECONDS
    python -m tests.limits_worker URL rate NAME LIMIT INTERVAL COUNT
    python -m tests.limits_worker URL hold NAME SIZE LEASE      # takes a slot and keeps it until killed
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from mesh import Mesh
from mesh.coordination.limits import Pool, RateLimit


def say(**line: object) -> None:
    print(json.dumps(line), flush=True)


async def main(url: str, kind: str, name: str, *args: str) -> None:
    mesh = await Mesh.connect(url, source="mesh://test/limits-worker")
    say(ready=True)
    if not await asyncio.to_thread(sys.stdin.readline):  # the test's word to start
        return
    try:
        await contend(mesh, kind, name, *args)
    finally:
        await mesh.close()


async def contend(mesh: Mesh, kind: str, name: str, *args: str) -> None:
    if kind == "pool":
        pool = Pool(mesh, name, size=int(args[0]))
        for _ in range(int(args[1])):
            async with pool.hold(timeout=60):
                acquired = time.time()
                await asyncio.sleep(float(args[2]))  # the work done while holding the slot
                say(acquired=acquired, released=time.time())
    elif kind == "rate":
        limit = RateLimit(mesh, name, limit=int(args[0]), interval=float(args[1]))
        for _ in range(int(args[2])):
            say(at=(await limit.acquire(timeout=60)).at)
    elif kind == "hold":
        lease = await Pool(mesh, name, size=int(args[0]), lease=float(args[1])).acquire(timeout=60)
        say(holder=lease.holder, expires=lease.expires)
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
