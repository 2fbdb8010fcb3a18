"""docker-compose.yml cannot run here (no Docker), so its shape is checked instead: a 3-node
JetStream cluster whose flags nats-server knows, Jaeger taking OTLP, and agents whose
commands the `mesh` CLI parses, whose targets import, and whose settings point at both."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from mesh.bus.server import server_binary
from mesh.bus.settings import server_urls
from mesh.cli.main import main
from mesh.runtime.process import load_agent

ROOT = Path(__file__).resolve().parent.parent
NODES = ("n1", "n2", "n3")
AGENTS = {"planner": "agents.planner:agent", "researcher": "agents.researcher:agent", "writer": "agents.writer:agent"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def flags(command: list[str]) -> dict[str, str]:
    """`["--name", "n1", "--js", ...]` -> {"name": "n1", "js": ""} (Go flags: one or two dashes)."""
    parsed: dict[str, str] = {}
    for i, token in enumerate(command):
        if token.startswith("-"):
            following = command[i + 1] if i + 1 < len(command) else "-"
            parsed[token.lstrip("-")] = "" if following.startswith("-") else following
    return parsed


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service["environment"].items()}


class TestCluster:
    @pytest.mark.unit
    def test_three_jetstream_nodes_route_to_each_other(self, services: dict[str, Any]) -> None:
        """Unique server names, one cluster name, JetStream with its own store, routes to all."""
        nodes = {name: flags(services[name]["command"]) for name in NODES}
        assert [node["name"] for node in nodes.values()] == list(NODES)
        assert {node["cluster_name"] for node in nodes.values()} == {"mesh"}
        for name, node in nodes.items():
            assert "js" in node and node["sd"] == "/data"
            assert urlsplit(node["cluster"]).port == 6222
            routes = {urlsplit(url).hostname: urlsplit(url).port for url in node["routes"].split(",")}
            assert routes == {n: 6222 for n in NODES}
            assert services[name]["image"].startswith("nats:2.")
            assert services[name]["volumes"] == [f"{name}-data:/data"]
        published = [port.split(":")[0] for name in NODES for port in services[name]["ports"] if port.endswith(":4222")]
        assert len(set(published)) == 3

    @pytest.mark.integration
    def test_nats_server_knows_every_flag(self, services: dict[str, Any]) -> None:
        """Each flag the nodes use is one `nats-server --help` lists."""
        usage = subprocess.run([server_binary(), "--help"], capture_output=True, text=True).stdout
        known = {flag.lstrip("-") for flag in re.findall(r"(?<![\w-])--?[a-z_]+", usage)}
        for name in NODES:
            assert set(flags(services[name]["command"])) <= known, name


@pytest.mark.unit
class TestJaeger:
    def test_takes_otlp_over_http_and_grpc(self, services: dict[str, Any]) -> None:
        jaeger = services["jaeger"]
        assert "jaeger" in jaeger["image"]
        assert {port.split(":")[-1] for port in jaeger["ports"]} >= {"16686", "4317", "4318"}


@pytest.mark.unit
class TestAgents:
    @pytest.mark.parametrize("role", sorted(AGENTS))
    def test_command_parses_and_target_loads(self, services: dict[str, Any], role: str) -> None:
        """`mesh agent run TARGET [options]` parses with the real CLI, and TARGET is that agent."""
        command = services[role]["command"]
        assert command[:3] == ["mesh", "agent", "run"] and command[3] == AGENTS[role]
        assert load_agent(command[3]).name == role
        assert isinstance(main, click.Group)
        group = main.commands["agent"]
        assert isinstance(group, click.Group)
        run = group.commands["run"]
        context = run.make_context("run", list(command[3:]))
        assert context.params["target"] == AGENTS[role]

    @pytest.mark.parametrize("role", sorted(AGENTS))
    def test_settings_point_at_the_cluster_and_jaeger(self, services: dict[str, Any], role: str) -> None:
        """All three NATS URLs, R3, JSON logs, and OTLP to Jaeger's port for the chosen protocol."""
        service = services[role]
        env = env_of(service)
        urls = server_urls(env["NATS_URL"])
        assert [(urlsplit(u).hostname, urlsplit(u).port) for u in urls] == [(n, 4222) for n in NODES]
        assert env["MESH_REPLICAS"] == "3"
        assert env["MESH_LOG_FORMAT"] == "json"
        assert env["OTEL_SERVICE_NAME"] == role
        endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        port = {"http/protobuf": 4318, "grpc": 4317}[env["OTEL_EXPORTER_OTLP_PROTOCOL"]]
        assert (endpoint.hostname, endpoint.port) == ("jaeger", port)
        assert set(service["depends_on"]) == {*NODES, "jaeger"}
        assert service["build"] == "."

    def test_two_researchers(self, services: dict[str, Any]) -> None:
        assert services["researcher"]["deploy"]["replicas"] == 2


@pytest.mark.unit
class TestDockerfile:
    def test_installs_the_project_and_runs_the_cli(self) -> None:
        dockerfile = (ROOT / "Dockerfile").read_text()
        base = re.search(r"^FROM python:3\.(\d+)", dockerfile, re.M)
        assert base is not None and int(base.group(1)) >= 11
        assert re.search(r"^RUN pip install \.", dockerfile, re.M)
        assert re.search(r'^CMD \["mesh"', dockerfile, re.M)
        ignored = (ROOT / ".dockerignore").read_text().split()
        assert ".venv" in ignored and ".git" in ignored
