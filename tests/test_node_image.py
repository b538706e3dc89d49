"""The node image's entrypoint works with the environment the operator gives a pod.

The image cannot be built on this machine, so what can be checked is checked: node/Dockerfile's
ENTRYPOINT and ENV, plus the variables the operator sets (node id, founding members, advertised
addresses), make `taskraft serve` accept its configuration (`--print-config` shows every value
coming from the environment) and run a node that becomes ready and stops with status 0 on
SIGTERM. Listen addresses are moved from 0.0.0.0 to 127.0.0.1 ports that are free, since tests
listen on loopback only.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from taskraft.local_cluster import free_port

DOCKERFILE = Path(__file__).resolve().parent.parent / "node" / "Dockerfile"
DEADLINE_S = 30.0


def dockerfile_instructions() -> tuple[dict[str, str], list[str]]:
    """The ENV variables and the ENTRYPOINT (exec form) of node/Dockerfile."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    environment: dict[str, str] = {}
    entrypoint: list[str] = []
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "ENV":
            for assignment in shlex.split(rest):
                name, _, value = assignment.partition("=")
                environment[name] = value
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
    return environment, entrypoint


def entrypoint_command(entrypoint: list[str]) -> list[str]:
    # The image's PATH has `taskraft`; here it is the same console script of this environment.
    assert entrypoint[0] == "taskraft"
    return [sys.executable, "-m", "taskraft", *entrypoint[1:]]


def operator_environment(tmp_path: Path, image_environment: dict[str, str]) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TASKRAFT_")}
    environment.update(image_environment)
    environment.update(
        {
            "TASKRAFT_NODE_ID": "demo-0",
            "TASKRAFT_DATA_DIR": str(tmp_path / "data"),
            "TASKRAFT_ADVERTISE_CLIENT_ADDRESS": "demo-0.demo-peers.default.svc:7100",
            "TASKRAFT_ADVERTISE_PEER_ADDRESS": "demo-0.demo-peers.default.svc:7101",
            "TASKRAFT_ADVERTISE_HTTP_ADDRESS": "demo-0.demo-peers.default.svc:7102",
        }
    )
    return environment


def test_the_image_environment_configures_every_value_from_the_environment(
    tmp_path: Path,
) -> None:
    image_environment, entrypoint = dockerfile_instructions()
    assert entrypoint == ["taskraft", "serve"]
    environment = operator_environment(tmp_path, image_environment)
    environment["TASKRAFT_INITIAL_MEMBERS"] = "demo-0=demo-0.demo-peers.default.svc:7101"
    printed = subprocess.run(
        [*entrypoint_command(entrypoint), "--print-config"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert printed.returncode == 0, printed.stderr
    lines = {line.split()[0]: line for line in printed.stdout.splitlines()}
    for name in ("node_id", "data_dir", "client_address", "peer_address", "http_address"):
        assert lines[name].endswith("[environment]"), lines[name]
    assert "0.0.0.0:7100" in lines["client_address"]
    assert "json" in lines["log_format"]


@pytest.mark.timeout(90)
def test_the_image_entrypoint_runs_a_node_that_becomes_ready_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    image_environment, entrypoint = dockerfile_instructions()
    environment = operator_environment(tmp_path, image_environment)
    client_port, peer_port, http_port = free_port(), free_port(), free_port()
    environment.update(
        {
            "TASKRAFT_CLIENT_ADDRESS": f"127.0.0.1:{client_port}",
            "TASKRAFT_PEER_ADDRESS": f"127.0.0.1:{peer_port}",
            "TASKRAFT_HTTP_ADDRESS": f"127.0.0.1:{http_port}",
            # A single-member cluster whose member address is this node's own peer port.
            "TASKRAFT_INITIAL_MEMBERS": f"demo-0=127.0.0.1:{peer_port}",
            "TASKRAFT_ADVERTISE_PEER_ADDRESS": f"127.0.0.1:{peer_port}",
        }
    )
    process = subprocess.Popen(
        entrypoint_command(entrypoint),
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        ready = False
        while not ready and time.monotonic() < deadline and process.poll() is None:
            try:
                url = f"http://127.0.0.1:{http_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    ready = response.status == 200
            except OSError:
                time.sleep(0.05)
        assert ready, "the node never became ready"
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(DEADLINE_S)
        assert process.stderr is not None
        log = process.stderr.read().decode()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert records, log
    assert all(record["node"] == "demo-0" for record in records)
    assert records[-1]["message"] == "node demo-0 stopped"
