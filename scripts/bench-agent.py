#!/usr/bin/env python3
"""Agent start-up: exec -> hello-ok, for our agent and OpenClaw's node host.

    scripts/bench-agent.py [--runs 30] [--openclaw-runs 3] [--bin target/release/clawnode]

Both agents connect to the same gateway (ours, on loopback), and the same
clock ends both measurements: the gateway's `connected role="node"` log
line, read as it is written (the gateway logs it right after its hello-ok).
For our agent the systemd readiness notification (READY=1 on NOTIFY_SOCKET,
sent when hello-ok arrives) is timed too. Our agent is measured on its first
start (a new device key and instance id are written) and on restarts with
its identity in place. RSS is read 10 s after the connect (the whole process
tree for OpenClaw's node host). One JSON line per measurement on stdout.
Stdlib only.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_rss_kib(pid):
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    except OSError:
        return 0
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    for child in out.split():
        total += tree_rss_kib(int(child))
    return total


class Gateway:
    """Our gateway on a free loopback port; counts node connections."""

    def __init__(self, binary, state):
        self.state = state
        self.proc = subprocess.Popen(
            [binary, "run", "--gateway", "--state-dir", state, "--listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.cond = threading.Condition()
        self.connects = []  # monotonic time of each node connect
        self.addr = None
        threading.Thread(target=self._read, daemon=True).start()
        with self.cond:
            self.cond.wait_for(lambda: self.addr is not None, timeout=20)
        if self.addr is None:
            raise SystemExit("gateway did not start")

    def _read(self):
        for line in self.proc.stderr:
            now = time.monotonic()
            with self.cond:
                if "gateway listening" in line:
                    for w in line.split():
                        if w.startswith("listen="):
                            self.addr = w[len("listen="):]
                if 'connected role="node"' in line:
                    self.connects.append(now)
                self.cond.notify_all()

    def wait_connect(self, after_count, timeout):
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.connects) > after_count, timeout=timeout)
            return self.connects[after_count] if ok else None

    def token_file(self):
        return os.path.join(self.state, "gateway.token")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def our_agent(binary, gw, state, notify_dir):
    """One start of our agent: (gateway-side ms, READY=1 ms, rss_kib after 10 s or None)."""
    sock_path = os.path.join(notify_dir, "notify.sock")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, RUST_LOG="warn")
    before = len(gw.connects)
    t0 = time.monotonic()
    agent = subprocess.Popen(
        [binary, "run", "--url", f"ws://{gw.addr}", "--token-file", gw.token_file(), "--state-dir", state],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    ready = None
    sock.settimeout(10)
    try:
        while ready is None:
            msg = sock.recv(4096).decode(errors="replace")
            if "READY=1" in msg.split("\n"):
                ready = time.monotonic()
    except socket.timeout:
        pass
    connected = gw.wait_connect(before, 10)
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=10)
    sock.close()
    ms = lambda t: None if t is None else round((t - t0) * 1000, 2)
    return ms(connected), ms(ready)


def openclaw_node(gw, peers, settle):
    home = tempfile.mkdtemp(prefix="oc-node-")
    env = dict(os.environ, HOME=home, OPENCLAW_STATE_DIR=os.path.join(home, "state"),
               OPENCLAW_NO_AUTO_UPDATE="1", NO_COLOR="1")
    with open(gw.token_file()) as f:
        env["OPENCLAW_GATEWAY_TOKEN"] = f.read().strip()
    host, port = gw.addr.rsplit(":", 1)
    before = len(gw.connects)
    t0 = time.monotonic()
    node = subprocess.Popen(
        [os.path.join(peers, "node"), os.path.join(peers, "openclaw.mjs"), "node", "run",
         "--host", host, "--port", port, "--display-name", "bench-node"],
        cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    connected = gw.wait_connect(before, 120)
    time.sleep(settle)
    rss = tree_rss_kib(node.pid)
    os.killpg(node.pid, signal.SIGTERM)
    try:
        node.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
    shutil.rmtree(home, ignore_errors=True)
    return (None if connected is None else round((connected - t0) * 1000, 1)), rss


def summary(label, values, extra=None):
    vals = [v for v in values if v is not None]
    out = {"label": label, "n": len(vals), "failed": len(values) - len(vals)}
    if vals:
        vals.sort()
        out.update(min=vals[0], median=statistics.median(vals),
                   p90=vals[min(len(vals) - 1, int(round(0.9 * (len(vals) - 1))))], max=vals[-1])
    if extra:
        out.update(extra)
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--openclaw-runs", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/clawnode"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-agent-")
    gw = Gateway(args.bin, os.path.join(work, "gw"))
    try:
        first, first_ready, again, again_ready = [], [], [], []
        for i in range(args.runs):
            state = os.path.join(work, f"agent-{i}")
            c, r = our_agent(args.bin, gw, state, work)  # first start: identity created
            first.append(c)
            first_ready.append(r)
            c, r = our_agent(args.bin, gw, state, work)  # restart: identity read
            again.append(c)
            again_ready.append(r)
        summary("ours.first_start.gateway_connected_ms", first)
        summary("ours.first_start.ready_ms", first_ready)
        summary("ours.restart.gateway_connected_ms", again)
        summary("ours.restart.ready_ms", again_ready)
        if args.openclaw_runs > 0:
            peers = subprocess.run([os.path.join(ROOT, "scripts/openclaw-peers.sh")],
                                   capture_output=True, text=True, check=True).stdout.strip()
            times, rsses = [], []
            for _ in range(args.openclaw_runs):
                t, rss = openclaw_node(gw, peers, settle=10)
                times.append(t)
                rsses.append(rss)
            summary("openclaw.node_host.gateway_connected_ms", times,
                    {"rss_tree_kib_after_10s": rsses})
    finally:
        gw.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
