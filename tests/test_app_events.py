"""Application events: a user's own event types, declared, emitted, received typed, published
from the command line, shown by tail and timeline, folded by a user projection, and re-run."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import types
from pathlib import Path
from typing import Any

import msgspec
import pytest

from examples.app_events import SHIPMENTS, CustomerNotified, OrderShipped, warehouse
from mesh import Agent, AppEvent, Context, Mesh, SchemaError
from mesh.bus.connection import presence_bucket
from mesh.bus.permissions import agent_permissions
from mesh.bus.server import LocalServer, start_server
from mesh.bus.settings import MeshSettings
from mesh.cli.publish import event_to_publish
from mesh.errors import ConfigError, PermissionDeniedError
from mesh.projections import fold, state_at
from replay.labels import label
from replay.reader import read_log
from replay.rerun import rerun
from tests.conftest import ROOT, AgentProcesses
from tests.helpers import EventLog
from tests.test_auth import auth_init
from tests.test_cli import mesh_cmd
from topics import UndeclaredAppEvent, subject_of
from topics.app import APP_TYPES, MAX_APP_DATA, subject_filter
from topics.envelope import CloudEvent, derived_id
from topics.record import Record
from topics.registry import EVENT_TYPES, decode_data, decode_on


def declare(event_type: str, subject: str, **fields: Any) -> type[AppEvent]:
    """A class made as `class X(AppEvent): TYPE = ...; SUBJECT = ...; <fields>` would make it."""
    def body(namespace: dict[str, Any]) -> None:
        namespace.update({"TYPE": event_type, "SUBJECT": subject, "__annotations__": fields, "__module__": __name__})

    return types.new_class("Declared", (AppEvent,), {"frozen": True, "kw_only": True}, body)


@pytest.mark.unit
class TestDeclaration:
    def test_a_declared_type_is_registered_and_fills_its_subject(self) -> None:
        """Importing the module registers the type; its subject is its template filled from its fields."""
        assert APP_TYPES["app.orders.shipped"] is OrderShipped
        assert subject_of(OrderShipped(order_id="o-1", carrier="ups")) == "mesh.app.orders.o-1"
        assert subject_filter(OrderShipped) == "mesh.app.orders.*"
        assert "app.orders.shipped" not in EVENT_TYPES  # the built-ins stay the mesh's own

    def test_int_fields_fill_tokens_too(self) -> None:
        """An int field fills a token with its digits."""
        cls = declare("app.test.numbered", "mesh.app.test.{n}.x", n=int)
        assert subject_of(cls(n=42)) == "mesh.app.test.42.x"  # type: ignore[call-arg]

    @pytest.mark.parametrize("event_type", [
        "mesh.orders.shipped", "orders.shipped", "app", "app.", "app..x", "app.a b", "app.*", "app.>",
        "app.x\n", "App.x", "app." + "x" * 130,
    ])  # fmt: skip
    def test_bad_type_names_are_refused(self, event_type: str) -> None:
        """Type names live in `app.`, made of tokens: mesh.* (the built-ins' namespace) and malformed names are refused."""
        with pytest.raises(TypeError, match="not an application type"):
            declare(event_type, "mesh.app.test.x", order_id=str)

    def test_a_type_cannot_be_declared_twice(self) -> None:
        """A second class for a declared type (a user's own or another's) is refused: nothing shadows."""
        with pytest.raises(TypeError, match=re.escape("already declared by examples.app_events.OrderShipped")):
            declare("app.orders.shipped", "mesh.app.orders.{order_id}", order_id=str)
        assert APP_TYPES["app.orders.shipped"] is OrderShipped

    def test_type_and_subject_are_required(self) -> None:
        """A subclass without TYPE or SUBJECT says what to set."""
        with pytest.raises(TypeError, match="sets TYPE and SUBJECT"):
            types.new_class("NoSubject", (AppEvent,), {}, lambda ns: ns.update({"TYPE": "app.test.nosubject"}))

    @pytest.mark.parametrize(("subject", "problem"), [
        ("app.orders.{order_id}", "must be 'mesh.app.'"),
        ("mesh.orders.{order_id}", "must be 'mesh.app.'"),
        ("mesh.app", "must be 'mesh.app.'"),
        ("mesh.app.orders.*", "neither a whole {field} nor a NATS token"),
        ("mesh.app.orders.>", "neither a whole {field} nor a NATS token"),
        ("mesh.app.orders.x{order_id}", "neither a whole {field} nor a NATS token"),
        ("mesh.app.orders..x", "neither a whole {field} nor a NATS token"),
        ("mesh.app.orders.{missing}", "must name a str or int field"),
        ("mesh.app.orders.{items}", "must name a str or int field"),
        ("mesh.app.orders.{order_id:>5}", "must name a str or int field"),
    ])  # fmt: skip
    def test_bad_subject_templates_are_refused(self, subject: str, problem: str) -> None:
        """SUBJECT is mesh.app. then tokens, each fixed or a whole {field} of type str or int."""
        with pytest.raises(TypeError, match=problem.replace("{", r"\{").replace("(", r"\(")):
            declare("app.test.bad-subject", subject, order_id=str, items=list[str])
        assert "app.test.bad-subject" not in APP_TYPES

    @pytest.mark.parametrize("value", ["a.b", "*", ">", "a b", "", "x" * 129, "tab\t", "new\nline"])
    def test_filled_values_must_be_tokens(self, value: str) -> None:
        """A field value that would change the subject (a '.', a wildcard, whitespace, empty, too long) is refused."""
        with pytest.raises(ValueError, match="cannot be a NATS subject token"):
            subject_of(OrderShipped(order_id=value, carrier="ups"))


@pytest.mark.unit
class TestReading:
    def test_declared_data_decodes_typed(self) -> None:
        """Data of a declared type decodes to its class."""
        assert decode_data("app.orders.shipped", b'{"order_id":"o-1","carrier":"ups"}') == OrderShipped(order_id="o-1", carrier="ups")

    def test_data_that_does_not_fit_is_a_validation_error(self) -> None:
        """A declared type with data missing a field or of the wrong type does not decode (agents dead-letter it: bad_data)."""
        for raw in (b'{"order_id":"o-1"}', b'{"order_id":7,"carrier":"ups"}', b"[1]"):
            with pytest.raises(msgspec.ValidationError):
                decode_data("app.orders.shipped", raw)

    def test_undeclared_types_are_read_generically(self) -> None:
        """An app. type nobody here declared is its type and its JSON object, not an error."""
        assert decode_data("app.misc.thing", b'{"a":[1,2]}') == UndeclaredAppEvent(type="app.misc.thing", data={"a": [1, 2]})
        with pytest.raises(msgspec.ValidationError):
            decode_data("app.misc.thing", b'"not an object"')
        with pytest.raises(KeyError):
            decode_data("mesh.misc.thing", b"{}")  # outside app., an unknown type stays unknown

    def test_a_declared_event_on_another_subject_does_not_decode(self) -> None:
        """Its data must give the subject it is stored on, which permissions guard."""
        raw = b'{"order_id":"o-1","carrier":"ups"}'
        assert decode_on("mesh.app.orders.o-1", "app.orders.shipped", raw) == OrderShipped(order_id="o-1", carrier="ups")
        with pytest.raises(msgspec.ValidationError, match=re.escape("its fields give 'mesh.app.orders.o-1'")):
            decode_on("mesh.app.orders.o-2", "app.orders.shipped", raw)

    def test_labels_name_the_type_and_fields(self) -> None:
        """Timelines label a user event, declared or not, by its type and its first short fields."""
        event = CloudEvent(specversion="1.0", id="e", source="s", type="app.misc.thing", time="2026-01-01T00:00:00Z")
        undeclared = Record(seq=1, subject="mesh.app.misc", event=event, data=UndeclaredAppEvent(type="app.misc.thing", data={"a": 1}))
        assert label(undeclared) == "app.misc.thing a=1"
        shipped = Record(seq=2, subject="mesh.app.orders.o-1", event=msgspec.structs.replace(event, type="app.orders.shipped"),
                         data=OrderShipped(order_id="o-1", carrier="ups"))  # fmt: skip
        assert label(shipped) == "app.orders.shipped order_id=o-1 carrier=ups parcels=1"


@pytest.mark.unit
class TestAgentDeclarations:
    def test_on_a_type_subscribes_to_its_subjects_typed(self) -> None:
        """`Agent.on(OrderShipped)` filters on the type's subjects and remembers the type."""
        agent = Agent("typed")

        @agent.on(OrderShipped)
        async def seen(record: Record, ctx: Context) -> None: ...

        sub = agent.subscriptions["seen"]
        assert (sub.subject, sub.event_type) == ("mesh.app.orders.*", OrderShipped)

    def test_emits_a_type_grants_its_subjects(self) -> None:
        """`Agent(emits=(OrderShipped,))` stands for the type's subject filter, which `mesh auth init` grants."""
        assert warehouse.emits == ("mesh.app.orders.*",)
        allowed = agent_permissions("warehouse", ("ship",), {}, "_INBOX_X", warehouse.emitted_subjects, owner="UX")
        assert "mesh.app.orders.*" in allowed.publish and "mesh.app.>" not in allowed.publish


@pytest.mark.unit
class TestPublishArguments:
    def test_declared_type_goes_on_its_own_subject(self) -> None:
        """With the declaring module named, the data is checked and the subject derived."""
        subject, data = event_to_publish(None, "app.orders.shipped", '{"order_id":"o-1","carrier":"ups"}', ("examples.app_events",))
        assert (subject, data) == ("mesh.app.orders.o-1", OrderShipped(order_id="o-1", carrier="ups"))

    @pytest.mark.parametrize(("subject", "data", "problem"), [
        (None, '{"order_id":"o-1"}', "does not fit app.orders.shipped"),
        (None, '{"order_id":"a.b","carrier":"ups"}', "cannot be a NATS subject token"),
        ("mesh.app.orders.o-2", '{"order_id":"o-1","carrier":"ups"}', "goes on 'mesh.app.orders.o-1'"),
        (None, "{", "not JSON"),
    ])  # fmt: skip
    def test_declared_type_refusals(self, subject: str | None, data: str, problem: str) -> None:
        """Data that does not fit, a value that cannot fill the subject, or another subject: refused."""
        with pytest.raises(ValueError, match=problem):
            event_to_publish(subject, "app.orders.shipped", data, ())

    def test_undeclared_type_is_checked_for_form_only(self) -> None:
        """An app. type no module here declares: a JSON object, on a subject given."""
        subject, data = event_to_publish("mesh.app.misc.x", "app.misc.thing", '{"a": 1}', ())
        assert (subject, data) == ("mesh.app.misc.x", UndeclaredAppEvent(type="app.misc.thing", data={"a": 1}))

    @pytest.mark.parametrize(("subject", "event_type", "data", "problem"), [
        ("mesh.app.x", "app.misc.thing", "[1]", "must be a JSON object"),
        ("mesh.app.x", "app.misc.thing", '"text"', "must be a JSON object"),
        ("mesh.app.x", "app.misc.thing", "{" * 5000 + "}" * 5000, "must be a JSON object"),
        ("mesh.app.x", "app.misc.thing", '{"a": "' + "x" * MAX_APP_DATA + '"}', "at most"),
        (None, "app.misc.thing", "{}", "give the SUBJECT"),
        ("mesh.app.x", "app.bad type", "{}", "not an application type"),
        ("mesh.x", "mesh.misc.thing", "{}", "unknown type"),
    ])  # fmt: skip
    def test_undeclared_refusals(self, subject: str | None, event_type: str, data: str, problem: str) -> None:
        """Not an object, too large, no subject, a malformed type or an unknown mesh. type: refused."""
        with pytest.raises(ValueError, match=problem):
            event_to_publish(subject, event_type, data, ())

    def test_a_module_that_cannot_be_imported(self) -> None:
        """--types naming a missing module says so."""
        with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
            event_to_publish(None, "app.orders.shipped", "{}", ("no_such_module",))


@pytest.mark.integration
class TestPublishingFromAClient:
    async def test_mesh_emit_and_refusals(self, mesh: Mesh, log: EventLog) -> None:
        """`Mesh.emit` puts an app event on its own subject; another subject, or a value that
        cannot fill it, is refused before anything is sent."""
        published = await mesh.emit(OrderShipped(order_id="o-9", carrier="ups"), event_id="fixed-id")
        again = await mesh.emit(OrderShipped(order_id="o-9", carrier="ups"), event_id="fixed-id")
        assert again.duplicate and again.seq == published.seq
        [record] = await log.wait_for_type("app.orders.shipped")
        assert (record.subject, record.data) == ("mesh.app.orders.o-9", OrderShipped(order_id="o-9", carrier="ups"))
        with pytest.raises(SchemaError, match=re.escape("its fields give 'mesh.app.orders.o-9'")):
            await mesh.publish("mesh.app.orders.other", OrderShipped(order_id="o-9", carrier="ups"))
        with pytest.raises(SchemaError, match="cannot be a NATS subject token"):
            await mesh.emit(OrderShipped(order_id="o.9", carrier="ups"))
        with pytest.raises(SchemaError, match=re.escape("under mesh.app.")):
            await mesh.publish("mesh.chat.room", UndeclaredAppEvent(type="app.misc.thing", data={}))


def _seq(published: str) -> int:
    """The seq in `mesh publish`'s `published <id> as seq <n>`."""
    return int(published.split(" as seq ")[1].split()[0])


@pytest.mark.e2e
class TestEndToEnd:
    @pytest.mark.timeout(240)  # three `mesh` commands and two agent processes on a loaded 2-core machine
    async def test_a_user_event_type_end_to_end(self, nats_server: LocalServer, agents: AgentProcesses, log: EventLog,
                                                mesh: Mesh) -> None:  # fmt: skip
        """One agent process emits OrderShipped from a task; another receives it typed and emits
        CustomerNotified; ids are derived, so the chain is in the task's timeline."""
        await agents.start("examples.app_events:warehouse")
        await agents.start("examples.app_events:notifier")
        done = mesh_cmd("task", "ship", "--task-id", "t-ship-1", "--input", '{"order_id": "o-1", "carrier": "ups"}',
                        "--wait", url=nats_server.url)  # fmt: skip
        assert done.returncode == 0 and json.loads(done.stdout) == {"shipped": "o-1"}, done.stderr
        [notified] = await log.wait_for_type("app.orders.notified", order_id="o-1")
        [shipped] = log.of_type("app.orders.shipped", order_id="o-1")
        [request] = log.of_type("mesh.task.requested", task_id="t-ship-1")
        assert shipped.data == OrderShipped(order_id="o-1", carrier="ups") and shipped.subject == "mesh.app.orders.o-1"
        assert shipped.event.id == derived_id(request.event.id, "emit/0")  # effectively once
        assert notified.data == CustomerNotified(order_id="o-1", message="your order left with ups")
        assert notified.event.id == derived_id(shipped.event.id, "notifier/notify/emit/0")
        assert (notified.event.causationid, notified.event.correlationid) == (shipped.event.id, "t-ship-1")

        shown = mesh_cmd("replay", "timeline", "t-ship-1", url=nats_server.url)
        assert shown.returncode == 0, shown.stderr
        assert "app.orders.shipped order_id=o-1 carrier=ups" in shown.stdout
        assert "app.orders.notified order_id=o-1" in shown.stdout

        rerun_ok = mesh_cmd("replay", "rerun", "examples.app_events:warehouse", "--correlation", "t-ship-1", url=nats_server.url)
        assert rerun_ok.returncode == 0 and "ok: 1 task(s)" in rerun_ok.stdout, rerun_ok.stdout + rerun_ok.stderr
        changed = Agent("warehouse")

        @changed.task("ship")
        async def ship(order: dict[str, str], ctx: Context) -> dict[str, str]:
            await ctx.emit(OrderShipped(order_id=order["order_id"], carrier="dhl"))  # not what was recorded
            return {"shipped": order["order_id"]}

        result = await rerun(changed, (await read_log(mesh)).records, "t-ship-1")
        assert not result.ok and result.divergence is not None
        assert result.divergence.reason == "emit/0 differs from the recorded one"
        assert result.divergence.actual is not None and result.divergence.actual.data["carrier"] == "dhl"

    @pytest.mark.timeout(240)  # five `mesh` commands, each a Python start, on a loaded 2-core machine
    async def test_publish_tail_dead_letters_and_a_projection_at_a_past_point(
        self, nats_server: LocalServer, agents: AgentProcesses, log: EventLog, mesh: Mesh
    ) -> None:
        """`mesh publish` takes app events (checked with --types, for form without); a bad one
        reaches the typed handler as one `bad_data` dead letter and it serves on; `mesh tail`
        shows them; the example projection folds them, at any past point."""
        notifier = await agents.start("examples.app_events:notifier")
        url = nats_server.url
        first = mesh_cmd("publish", "--types", "examples.app_events", "--type", "app.orders.shipped",
                         "--data", '{"order_id": "o-1", "carrier": "ups"}', url=url)  # fmt: skip
        assert first.returncode == 0, first.stderr
        refused = mesh_cmd("publish", "--types", "examples.app_events", "--type", "app.orders.shipped",
                           "--data", '{"order_id": "o-2"}', url=url)  # fmt: skip
        assert refused.returncode == 2 and "does not fit app.orders.shipped" in refused.stderr
        # without --types the command checks form only: the agent, which knows the type, refuses it
        missing = mesh_cmd("publish", "mesh.app.orders.o-3", "--type", "app.orders.shipped", "--data", '{"order_id": "o-3"}', url=url)
        assert missing.returncode == 0, missing.stderr
        # as any client that does not know the type could: on a subject its fields do not give, another type
        elsewhere = await mesh.publish("mesh.app.orders.o-4", UndeclaredAppEvent(type="app.orders.shipped",
                                       data={"order_id": "o-5", "carrier": "ups"}))  # fmt: skip
        await mesh.publish("mesh.app.orders.o-6", UndeclaredAppEvent(type="app.misc.thing", data={"note": "hi"}))
        last = await mesh.emit(OrderShipped(order_id="o-7", carrier="dhl", parcels=2))

        await log.wait_for_type("app.orders.notified", order_id="o-7")  # it served on past the bad ones
        letters = await log.wait_for_type("mesh.dead.lettered", count=2)
        assert sorted((r.data.stream_seq, r.data.reason) for r in letters) == [  # type: ignore[attr-defined]
            (_seq(missing.stdout), "bad_data"), (elsewhere.seq, "bad_data")]  # fmt: skip
        assert "its fields give 'mesh.app.orders.o-5'" in next(
            r.data.error for r in letters if r.data.stream_seq == elsewhere.seq)  # type: ignore[attr-defined]  # fmt: skip
        assert json.loads(base64.b64decode(letters[0].data.raw))["type"] == "app.orders.shipped"  # type: ignore[attr-defined]
        assert [r.data.order_id for r in log.of_type("app.orders.notified")] == ["o-1", "o-7"]  # type: ignore[attr-defined]
        assert notifier.poll() is None

        text = mesh_cmd("tail", "mesh.app.>", "--all", "--no-follow", "--text", url=url)
        assert text.returncode == 0, text.stderr
        # `mesh tail` has no declaration of these types: it shows their data as it is, less the subject's tokens
        assert re.search(r'#\d+ app\.orders\.shipped +app\.orders\.o-1 +\{"carrier":"ups"\}', text.stdout), text.stdout
        assert re.search(r'#\d+ app\.misc\.thing +app\.orders\.o-6 +\{"note":"hi"\}', text.stdout), text.stdout

        before = last.seq - 1
        past = mesh_cmd("replay", "state", "examples.app_events:SHIPMENTS", "--at", str(before), "--no-snapshot", url=url)
        assert past.returncode == 0, past.stderr
        assert json.loads(past.stdout)["orders"] == {"o-1": {"carrier": "ups", "parcels": 1, "shipped_seq": _seq(first.stdout),
                                                             "notified": True}}  # fmt: skip
        records = (await read_log(mesh)).records  # the same fold as a library call, from the same log
        assert sorted(state_at(SHIPMENTS, records, seq=before).orders) == ["o-1"]
        now = fold(SHIPMENTS, records).orders
        assert sorted(now) == ["o-1", "o-7"] and (now["o-7"].carrier, now["o-7"].parcels) == ("dhl", 2)


@pytest.mark.unit
class TestDocs:
    def test_the_patterns_page_quotes_the_example_as_it_is(self) -> None:
        """The definitions docs/PATTERNS.md quotes from examples/app_events.py are in that file as quoted."""
        page = (ROOT / "docs" / "PATTERNS.md").read_text()
        blocks = re.findall(r"<!-- example: examples/app_events.py -->\n```python\n(.*?)```", page, re.S)
        assert len(blocks) == 2
        source = (ROOT / "examples" / "app_events.py").read_text()
        for quoted in blocks:
            for definition in quoted.split("\n\n\n"):  # each top-level definition, whole
                assert definition.strip() in source


@pytest.mark.e2e
class TestWithPermissions:
    @pytest.mark.timeout(240)  # `mesh auth init` and two agent processes on a loaded 2-core machine
    async def test_roles_emit_and_receive_their_own_events_only(self, tmp_path: Path) -> None:
        """With `mesh auth init` permissions the chain runs with no violation; a role cannot
        publish another role's app events, and the client none at all."""
        auth = tmp_path / "auth"
        await auth_init(auth, "examples.app_events:warehouse", "examples.app_events:notifier")
        server = start_server(tmp_path / "store", port=-1, log_file=tmp_path / "nats.log",
                              extra_args=["-c", str(auth / "auth.conf")])  # fmt: skip
        admin = await Mesh.connect(settings=MeshSettings(url=server.url, nkey_seed=str(auth / "admin.nk")))
        log = EventLog(admin)
        agents = AgentProcesses(server.url, log, tmp_path)
        try:
            await presence_bucket(admin.js)
            await log.start()
            await agents.start("examples.app_events:warehouse", "--nkey", str(auth / "warehouse.nk"))
            await agents.start("examples.app_events:notifier", "--nkey", str(auth / "notifier.nk"))
            async with await Mesh.connect(settings=MeshSettings(url=server.url, nkey_seed=str(auth / "client.nk"))) as client:
                assert await client.request("ship", {"order_id": "o-1", "carrier": "ups"}, timeout=60) == {"shipped": "o-1"}
                with pytest.raises(PermissionDeniedError):
                    await client.emit(OrderShipped(order_id="o-2", carrier="ups"))
            async with await Mesh.connect(settings=MeshSettings(url=server.url, nkey_seed=str(auth / "warehouse.nk"))) as role:
                with pytest.raises(PermissionDeniedError):
                    await role.emit(CustomerNotified(order_id="o-1", message="forged"))
            await log.wait_for_type("app.orders.notified", order_id="o-1")
            assert [r.data.message for r in log.of_type("app.orders.notified")] == ["your order left with ups"]  # type: ignore[attr-defined]
            violations = [line for line in (tmp_path / "nats.log").read_text().splitlines() if "Violation" in line]
            assert len(violations) == 2 and all("mesh.app." in line for line in violations), violations
        finally:
            await asyncio.get_running_loop().run_in_executor(None, agents.stop_all)
            await log.stop()
            await admin.close()
            server.stop()
