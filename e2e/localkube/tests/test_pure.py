"""The parts of the local node that need no cluster: expansion, Dockerfiles, addresses,
back-off, probe thresholds and hosts files."""

from __future__ import annotations

from localkube.addresses import QUARANTINE_SECONDS, AddressAllocator
from localkube.containers import RestartBackoff
from localkube.environment import api_server_variables, expand, field_value, parse_quantity
from localkube.images import UnknownImageError, parse_dockerfile, repository_name, resolve_image
from localkube.names import PodName, Record, cluster_text, pod_text
from localkube.probes import ProbeCounter


def test_expansion_follows_kubernetes_rules() -> None:
    variables = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", variables) == "1-two"
    assert expand("$$(A)", variables) == "$(A)"
    assert expand("$(MISSING)", variables) == "$(MISSING)"
    assert expand("$(A", variables) == "$(A"
    assert expand("cost $5", variables) == "cost $5"
    assert expand("end$", variables) == "end$"


def test_api_server_variables_point_at_the_real_server() -> None:
    variables = api_server_variables("https://127.0.0.1:6443")
    assert variables["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert variables["KUBERNETES_SERVICE_PORT"] == "6443"
    assert variables["KUBERNETES_PORT"] == "tcp://127.0.0.1:6443"


def test_field_paths() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "n", "labels": {"a": "x", "b": "y"}},
        "spec": {"nodeName": "localkube"},
        "status": {"podIP": "127.1.0.9", "podIPs": [{"ip": "127.1.0.9"}]},
    }
    assert field_value(pod, "metadata.labels['a']") == "x"
    assert field_value(pod, "metadata.labels") == 'a="x"\nb="y"'
    assert field_value(pod, "status.podIPs") == "127.1.0.9"
    assert field_value(pod, "spec.nodeName") == "localkube"


def test_quantities() -> None:
    assert parse_quantity("250m") * 1000 == 250
    assert parse_quantity("1Gi") == 2**30


def test_dockerfile_parsing() -> None:
    config = parse_dockerfile(
        """
        FROM python:3.11-slim
        RUN groupadd --system --gid 7 team \\
            && useradd --uid 8 --gid team --home-dir /home/worker worker
        ENV A=1 \\
            B="two words"
        ENV LEGACY value with spaces
        WORKDIR /srv
        WORKDIR app
        USER worker:team
        ENTRYPOINT ["run", "$A"]
        CMD ["--flag"]
        """
    )
    assert config.entrypoint == ["run", "$A"]
    assert config.command == ["--flag"]
    assert config.environment == {"A": "1", "B": "two words", "LEGACY": "value with spaces"}
    assert config.working_directory == "/srv/app"
    assert config.user == "worker:team"
    assert config.passwd_lines() == ["worker:x:8:7::/home/worker:/bin/sh"]
    assert config.group_lines() == ["team:x:7:"]


def test_images_of_the_repository() -> None:
    assert repository_name("registry.example:5000/team/taskraft:0.1.0@sha256:00") == "taskraft"
    assert resolve_image("taskraft:0.1.0").entrypoint == ["taskraft", "serve"]
    assert resolve_image("ghcr.io/x/taskraft-operator").entrypoint[0] == "kopf"
    try:
        resolve_image("nginx")
    except UnknownImageError as error:
        assert "nginx" in str(error)
    else:
        raise AssertionError("an unknown image resolved")


def test_released_addresses_are_quarantined() -> None:
    now = [0.0]
    allocator = AddressAllocator(clock=lambda: now[0])
    first = allocator.allocate("a")
    assert allocator.allocate("a") == first
    second = allocator.allocate("b")
    assert second != first
    allocator.release("a")
    assert allocator.allocate("c", preferred=first) not in (first, second)
    now[0] += QUARANTINE_SECONDS
    assert allocator.allocate("d", preferred=first) == first


def test_restart_backoff() -> None:
    backoff = RestartBackoff()
    delays = [backoff.next_delay(ran_for=1) for _ in range(8)]
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]
    assert backoff.next_delay(ran_for=601) == 0


def test_probe_thresholds() -> None:
    counter = ProbeCounter(success_threshold=2, failure_threshold=3)
    assert [counter.record(ok) for ok in (True, True, False, False, False, True)] == [
        None,
        True,
        None,
        None,
        False,
        None,
    ]


def test_hosts_files() -> None:
    records = [Record("ns", "peers", "", "127.1.0.1"), Record("ns", "peers", "p-0", "127.1.0.1")]
    cluster = cluster_text(records).splitlines()
    own = pod_text(PodName("ns", "p-1", "peers", "127.1.0.2"), records).splitlines()
    assert "127.1.0.1\tp-0.peers.ns.svc.cluster.local" in cluster
    assert "127.1.0.1\tpeers.ns.svc" in cluster
    assert "127.1.0.2\tp-1.peers.ns.svc.cluster.local\tp-1" in own
    assert "127.1.0.1\tp-0.peers" in own
