"""docker-compose.yml: Kafka in KRaft mode, and every `pm` service runs a real `pm` subcommand.

No Docker engine runs this in CI; these checks keep the file consistent with the CLI and itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from customer_email.events import STEPS
from pm.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PM_SERVICES = sorted(name for name, svc in SERVICES.items() if svc.get("build") == ".")


def _depends(service: dict[str, Any]) -> dict[str, Any]:
    deps = service.get("depends_on") or {}
    return {name: {} for name in deps} if isinstance(deps, list) else deps


def test_every_component_has_a_service() -> None:
    expected = {"kafka", "topics", "pm", "order-service", "smtp-sink", "mailpit", "jaeger"}
    expected |= {f"consumer-{step}" for step in STEPS}
    assert expected <= set(SERVICES)
    assert set(PM_SERVICES) >= expected - {"kafka", "mailpit", "jaeger"}


@pytest.mark.parametrize("name", PM_SERVICES)
def test_pm_service_command_is_a_real_subcommand(name: str) -> None:
    command = SERVICES[name]["command"]
    assert isinstance(command, list) and all(isinstance(a, str) for a in command)
    try:
        args = build_parser().parse_args(command)
    except SystemExit as exc:  # argparse: unknown subcommand or option
        pytest.fail(f"service {name}: `pm {' '.join(command)}` does not parse (exit {exc.code})")
    assert callable(args.handler)


def test_kafka_runs_kraft_single_node_with_a_named_volume() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == env["KAFKA_NODE_ID"]
    listeners = dict(re.findall(r"(\w+)://[^:]*:(\d+)", env["KAFKA_LISTENERS"]))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert voter == f"kafka:{listeners[controller]}"
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)
    advertised = dict(re.findall(r"(\w+)://([^,]+)", env["KAFKA_ADVERTISED_LISTENERS"]))
    assert controller not in advertised
    assert (
        advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == SERVICES["pm"]["environment"]["PM_BOOTSTRAP"]
    )
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])  # base64 of a 16-byte UUID
    volume, _, path = kafka["volumes"][0].partition(":")
    assert volume in COMPOSE["volumes"] and path == env["KAFKA_LOG_DIRS"]


def test_startup_order_and_addresses_point_at_real_services() -> None:
    assert _depends(SERVICES["topics"])["kafka"]["condition"] == "service_healthy"
    assert "healthcheck" in SERVICES["kafka"]
    for name in PM_SERVICES:
        svc = SERVICES[name]
        if name.startswith("consumer-") or name == "pm":
            assert _depends(svc)["topics"]["condition"] == "service_completed_successfully", name
        env = svc["environment"]
        hosts = {
            env["PM_BOOTSTRAP"].split(":")[0],
            urlsplit(env["PM_ORDER_SERVICE_URL"]).hostname,
            env["PM_SMTP_HOST"],
            urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"]).hostname,
        }
        assert hosts <= set(SERVICES), f"{name}: {hosts - set(SERVICES)} are not services"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in COMPOSE["volumes"], f"{name}: volume {source}"
    assert SERVICES["pm"]["environment"]["PM_INSTANCE_ID"]
    order_port = urlsplit(SERVICES["pm"]["environment"]["PM_ORDER_SERVICE_URL"]).port
    assert str(order_port) in SERVICES["order-service"]["command"]


def test_state_volumes_are_not_shared() -> None:
    """Each RocksDB store / ledger needs its own volume (RocksDB locks its directory)."""
    owners: dict[str, str] = {}
    for name in PM_SERVICES:
        for volume in SERVICES[name].get("volumes", []):
            source, _, target = volume.partition(":")
            if target == "/data/state":
                assert source not in owners, f"{name} and {owners.get(source)} share {source}"
                owners[source] = name
    assert {f"consumer-{step}" for step in STEPS} | {"pm"} <= set(owners.values())


def test_dockerfile_builds_the_pm_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"pip install .*\.", text)
    assert 'ENTRYPOINT ["pm"]' in text
