"""Rendezvous ports when processes start side by side (pytest-xdist workers, several jobs on one machine).

A port the kernel calls free can be handed to another process's outgoing connection before a server binds it; the
suite once failed on exactly that (EADDRINUSE in a single-rank launch while the other xdist worker ran).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from distinctad.testing import _ephemeral_range, child_env, free_port, run_cmd


def test_test_ports_lie_outside_the_ephemeral_range_in_a_block_per_worker(monkeypatch):
    lo, _ = _ephemeral_range()
    seen: dict[str, list[int]] = {}
    for worker in ("", "gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        ports = [free_port() for _ in range(5)]
        assert len(set(ports)) == 5 and all(p < lo for p in ports)  # never one the kernel hands out on its own
        for p in ports:  # and free when given
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
        seen[worker] = ports
    blocks = {w: (lo - 2000 * (i + 1), lo - 2000 * i) for i, w in enumerate(seen)}  # "": just below, gw0 next...
    for worker, ports in seen.items():
        a, b = blocks[worker]
        assert all(a <= p < b for p in ports), (worker, ports, blocks[worker])


def test_a_taken_port_is_skipped(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw5")
    first = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first + 1))
        taken.listen()
        assert free_port() == first + 2


def test_a_single_process_job_replaces_its_rendezvous_port_when_it_is_taken(tmp_path):
    """init_distributed picks its own port, finds it taken (planted here), and starts on a second one."""
    script = textwrap.dedent(
        """
        import socket
        import distinctad.train.core.distributed as D

        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        picks = iter([taken])
        real = D.free_port
        D.free_port = lambda: next(picks, None) or real()
        print(D.init_distributed(), taken)
        import os, torch.distributed as dist
        print(os.environ["MASTER_PORT"] != str(taken), dist.get_world_size())
        dist.destroy_process_group()
        """
    )
    out = [line for line in run_cmd([sys.executable, "-c", script], cwd=tmp_path, timeout=120).stdout.splitlines()]
    out = [line for line in out if not line.startswith("[")]  # DeepSpeed's accelerator notice
    assert out[0].startswith("(0, 0, 1) ") and out[1] == "True 1", out


def test_a_launcher_given_port_that_is_taken_still_fails_plainly(tmp_path):
    """MASTER_PORT set by a launcher or the user is theirs: no silent switch to another port."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        script = "import distinctad.train.core.distributed as D; D.init_distributed()"
        env = child_env({"MASTER_PORT": str(port), "MASTER_ADDR": "127.0.0.1"})
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "EADDRINUSE" in proc.stderr
