"""What a node's look at its TLS files costs, and what a certificate reload costs.

`taskraft serve --tls-cert` looks at its certificate, key and authority files once a second, on
the event loop's thread (taskraft.server.node), and makes new TLS contexts when they changed.
Both run between the node's other work, so their time is time the event loop serves nothing:
this measures it, through `taskraft.tls.NodeTls` itself, on files of a private authority in a
temporary directory (removed at the end).

    .venv/bin/python bench/tls_reload.py [--looks N] [--reloads N]

It prints the time of one look at unchanged files (the mean of `--looks` looks) and the
p50 / p99 / max of `--reloads` reloads, each after a renewed certificate was written over the
files (ECDSA P-256 keys, as taskraft.certificates issues them).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from reporting import percentile, print_table

from taskraft.certificates import CertificateAuthority
from taskraft.tls import NodeTls, TlsFiles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--looks", type=int, default=2_000, help="looks at unchanged files")
    parser.add_argument("--reloads", type=int, default=50, help="reloads after a renewal")
    arguments = parser.parse_args()
    if arguments.looks < 1 or arguments.reloads < 1:
        parser.error("--looks and --reloads must be at least 1")
    directory = Path(tempfile.mkdtemp(prefix="taskraft-tls-bench-"))
    try:
        authority = CertificateAuthority.create(directory, "ca", "taskraft-bench-ca")
        node = authority.issue_node(directory / "served")
        tls = NodeTls(TlsFiles(node.certificate, node.private_key, authority.files.certificate))

        began = time.perf_counter()
        for _ in range(arguments.looks):
            changed = tls.reload_if_changed()
            assert not changed, "the files did not change"
        look_us = (time.perf_counter() - began) / arguments.looks * 1e6

        reloads_s: list[float] = []
        for number in range(arguments.reloads):
            renewed = authority.issue_node(directory / f"renewed-{number}")
            shutil.copy(renewed.private_key, node.private_key)
            shutil.copy(renewed.certificate, node.certificate)
            began = time.perf_counter()
            changed = tls.reload_if_changed()
            reloads_s.append(time.perf_counter() - began)
            assert changed, "the renewed certificate was not loaded"
        assert tls.reloads == arguments.reloads and tls.reload_failures == 0
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(f"TLS files: {arguments.looks:,} looks at unchanged files, {arguments.reloads} reloads")
    print_table(
        ["measure", "value"],
        [
            ["look at unchanged files (mean)", f"{look_us:.1f} µs"],
            ["reload p50", f"{percentile(reloads_s, 0.50) * 1e3:.2f} ms"],
            ["reload p99", f"{percentile(reloads_s, 0.99) * 1e3:.2f} ms"],
            ["reload max", f"{max(reloads_s) * 1e3:.2f} ms"],
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
