"""Two agent roles whose event subscriptions would share one durable consumer."""

from __future__ import annotations

import pytest

from mesh import Agent, ConfigError, Context, Mesh
from mesh.runtime.runner import AgentRunner
from topics import subjects
from topics.record import Record

pytestmark = pytest.mark.integration


def watcher(role: str, subject: str, name: str) -> Agent:
    agent = Agent(role)

    @agent.on(subject, name=name)
    async def seen(record: Record, ctx: Context) -> None:
        pass

    return agent


class TestSharedName:
    async def test_the_second_role_refuses_to_start_and_the_first_keeps_its_filter(self, mesh: Mesh) -> None:
        """Role `a`'s `b-c` and role `a-b`'s `c` are both `on-a-b-c`: `a-b` starting must not
        re-point `a`'s consumer at its own subject."""
        first = AgentRunner(watcher("a", "mesh.board.x.>", "b-c"), mesh)
        await first.start()
        try:
            second = AgentRunner(watcher("a-b", "mesh.vote.>", "c"), mesh)
            with pytest.raises(ConfigError, match="'on-a-b-c' is agent role 'a'"):
                await second.start()
            info = await mesh.js.consumer_info(subjects.STREAM, "on-a-b-c")
            assert info.config.filter_subject == "mesh.board.x.>"
        finally:
            await first.stop("done")

    async def test_a_role_restarting_with_a_new_subject_updates_its_own(self, mesh: Mesh) -> None:
        first = AgentRunner(watcher("a", "mesh.board.x.>", "b-c"), mesh)
        await first.start()
        await first.stop("done")
        again = AgentRunner(watcher("a", "mesh.board.y.>", "b-c"), mesh)
        await again.start()
        try:
            info = await mesh.js.consumer_info(subjects.STREAM, "on-a-b-c")
            assert info.config.filter_subject == "mesh.board.y.>"
        finally:
            await again.stop("done")
