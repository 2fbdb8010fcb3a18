"""`approve`: a human in the loop. Puts a question to a person and returns the answer.

    mesh agent run agents.approver:agent
    mesh task approve --input '{"question": "Ship 2.1 to production?", "options": ["yes", "no"]}' --wait
    mesh inbox                       # in another shell: the open question and its id
    mesh answer <id> yes             # the task completes with {"answer": "yes", ...}

Input: `question`; optional `options` (the answer must be one of them), `context` (shown by
`mesh inbox`), `timeout` (seconds, default an hour) and `default` (returned if nobody answers
in time; without it the task fails with HumanTimeoutError). Kill the agent while it waits and
start it again: the redelivered task asks the same question (stored once) and picks up the
answer, even one given while no agent ran.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mesh import Agent, Context
from mesh.coordination.humans import DEFAULT_ASK_TIMEOUT, NO_DEFAULT

agent = Agent("approver", requests=())


class Approval(msgspec.Struct, frozen=True):
    question: str
    options: list[str] = []
    context: str = ""
    timeout: float = DEFAULT_ASK_TIMEOUT
    default: str | None = None


@agent.task("approve")
async def approve(input: Approval, ctx: Context) -> dict[str, Any]:
    default = NO_DEFAULT if input.default is None else input.default
    answer = await ctx.ask(input.question, input.options, context=input.context, timeout=input.timeout,
                           default=default)  # fmt: skip
    return {"question": input.question, "answer": answer}
