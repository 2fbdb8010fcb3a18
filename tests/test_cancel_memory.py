"""A flood of cancel requests cannot push a real one out of an agent's memory."""

from __future__ import annotations

import pytest

from mesh import Mesh
from mesh.runtime.cancels import Cancels
from tests.helpers import eventually
from topics.tasks import cancel_key_of

pytestmark = pytest.mark.integration


class TestForgotten:
    async def test_a_request_pushed_out_by_others_is_found_in_the_log(self, mesh: Mesh) -> None:
        """Memory for 3 requests; the victim's is the first of 8 (any client may publish the
        other 7 on their own tasks' subjects): it is forgotten, then found on its own subject."""
        cancels = Cancels(mesh, remembered=3)
        await cancels.start()
        try:
            await mesh.cancel("victim", "the user changed their mind")
            for n in range(7):
                await mesh.cancel(f"junk-{n}", "noise")
            last = cancel_key_of(mesh.cancel_token("junk-6"))
            await eventually(lambda: cancels.asked("junk-6", last) is not None, timeout=10, what="the flood heard")
            key = cancel_key_of(mesh.cancel_token("victim"))
            assert cancels.asked("victim", key) is None and cancels.may_have_forgotten("victim")  # pushed out
            assert await cancels.asked_now("victim", key) == "the user changed their mind"
            assert await cancels.asked_now("victim", cancel_key_of("another user's token")) is None
            assert await cancels.asked_now("never-cancelled", key) is None
        finally:
            await cancels.stop()

    async def test_nothing_is_read_while_nothing_was_forgotten(self, mesh: Mesh) -> None:
        cancels = Cancels(mesh)
        await cancels.start()
        try:
            await mesh.cancel("t-1", "stop")
            key = cancel_key_of(mesh.cancel_token("t-1"))
            await eventually(lambda: cancels.asked("t-1", key) is not None, timeout=10, what="the request heard")
            assert not cancels.may_have_forgotten("t-1") and await cancels.asked_now("t-1", key) == "stop"
            assert await cancels.asked_now("t-2", key) is None
        finally:
            await cancels.stop()
