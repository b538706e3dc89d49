"""The Kubernetes release the local cluster runs, read from the pin the binaries are built from.

The kubelet reports its version on the Node and in its probes' User-Agent, as a real kubelet of
the same release as the control plane would (e2e/controlplane/kubernetes/go.mod).
"""

from __future__ import annotations

import re
from pathlib import Path

PIN = Path(__file__).resolve().parents[1] / "controlplane" / "kubernetes" / "go.mod"


def kubernetes_version(pin: Path = PIN) -> str:
    """`v1.36.3` from the `require k8s.io/kubernetes v1.36.3` line of the pin."""
    found = re.search(r"^require k8s\.io/kubernetes (v\d+\.\d+\.\d+)", pin.read_text(), re.M)
    if found is None:
        raise ValueError(f"{pin} does not require k8s.io/kubernetes")
    return found.group(1)


KUBERNETES_VERSION = kubernetes_version()
# "1.36": the User-Agent of a kubelet's probes carries the minor release only.
KUBERNETES_MINOR = ".".join(KUBERNETES_VERSION.removeprefix("v").split(".")[:2])
