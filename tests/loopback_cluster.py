"""A multi-node Ray cluster on loopback, in its own process, for the Jobs API tests.

``python -m tests.loopback_cluster --nodes 2 --cpus 1 --dashboard-port P`` starts a head node (with the
dashboard and Jobs API on 127.0.0.1:P) and ``nodes - 1`` worker nodes as separate raylets, prints
``READY <gcs address>`` and keeps them up until stdin closes or SIGTERM, then removes every node it
started (``Cluster.shutdown``: by handle, never a bare ``ray stop``). Token auth is on when the
environment says so (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``), as for ``ray start``.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading


def free_port() -> int:
    """A TCP port on loopback that is free now (shared by the tests that start servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cpus", type=float, default=1)
    ap.add_argument("--dashboard-port", type=int, required=True)
    args = ap.parse_args()

    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": args.cpus,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": args.dashboard_port,
            # every node's dashboard agent on its own port: the default (52365) may be held by another
            # Ray on this machine (e.g. a test's local Ray), and the Jobs API needs the head's agent
            "dashboard_agent_listen_port": free_port(),
        },
    )
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=args.cpus, dashboard_agent_listen_port=free_port())
    cluster.wait_for_nodes()
    print(f"READY {cluster.address}", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
