#!/usr/bin/env python3
"""Writes the seed inputs for the fuzz targets into seeds/<target>/.

Seeds: the frames captured from OpenClaw 2026.9.6 (tests/vectors/openclaw-wire,
the same files as the shared capture), each error of 09-errors.json as a frame
of its own, one request per gateway method, and the config files we ship
(packaging/clawnode.toml, the Kubernetes ConfigMaps). `fuzz/smoke.sh` does not
need this script: the committed corpus (fuzz/corpus/) is these seeds plus
what the fuzzer found, minimised with `cargo fuzz cmin`.
"""
import hashlib
import json
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent.parent
wire = root / "tests/vectors/openclaw-wire"
out = root / "fuzz/seeds"


def put(target, text):
    data = text.encode() if isinstance(text, str) else text
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


frames = []
for f in sorted(wire.glob("*.json")):
    text = f.read_text()
    if f.name == "09-errors.json":
        for v in json.loads(text).values():
            if v.get("type") == "res":
                frames.append(json.dumps(v, separators=(",", ":")))
        continue
    frames.append(text)
    frames.append(json.dumps(json.loads(text), separators=(",", ":")))

req = lambda m, p: json.dumps({"type": "req", "id": "r1", "method": m, "params": p}, separators=(",", ":"))
frames += [
    req("system-presence", {}),
    req("health", None),
    req("node.list", {}),
    req("system-event", {"text": "Node: h", "instanceId": "i-1", "host": "h", "ip": "192.0.2.1",
                          "version": "1", "platform": "linux", "deviceFamily": "Linux",
                          "modelIdentifier": "x86_64", "mode": "node", "lastInputSeconds": 3,
                          "reason": "periodic", "roles": ["node"], "scopes": []}),
    req("node.event", {"event": "node.host.stats",
                        "payload": {"cpuCount": 2, "loadAverage": [0.1, 0.2, 0.3]}}),
    req("node.skills.update", {"skills": [{"name": "s"}]}),
    req("node.pluginTools.update", {"tools": []}),
    req("node.runnerInventory.update", {"protocolFeatures": ["node-worker-supervisor-v6"]}),
    req("connect", {}),
    req("no.such.method", [1, "x", None, True, 1.5e300, -0.0]),
    '{"type":"event","event":"tick","payload":{"ts":1},"seq":18446744073709551615,"stateVersion":{"presence":1}}',
    '{"type":"res","id":"x","ok":false,"error":{"code":"SOMETHING_NEW","message":"m","retryable":true,"retryAfterMs":5,"details":{"code":"AUTH_RATE_LIMITED"}}}',
]
for f in frames:
    put("frame", f)
    put("connect_params", f)
# Bare params, as from_str sees them.
for f in (wire / "02-node-host.connect.req.json", wire / "06-cli.connect.req.json"):
    put("connect_params", json.dumps(json.loads(f.read_text())["params"]))

configs = [(root / "packaging/clawnode.toml").read_text()]
k8s = (root / "deploy/kubernetes/configmap.yaml").read_text()
for block in re.findall(r"clawnode\.toml: \|\n((?:    .*\n|\n)+)", k8s):
    configs.append("\n".join(l[4:] for l in block.splitlines()) + "\n")
configs += [
    'url = "ws://a:1"\n\n[gateway]\nlisten_addr = "x"\n',
    'beacon_interval_secs = 18446744073709551615\nstats_interval_secs = -1\n'
    'log_level = "debug"\nlog_format = "json"\ndisplay_name = "\\u00e9\\ud7ff"\n'
    '[gateway]\nenabled = true\nauth = "none"\npresence_ttl_secs = 300\n'
    'presence_max_entries = 200\ntick_interval_secs = 30\n',
    "display_name = '''\nmulti\nline'''\n",
]
for c in configs:
    put("config", c)
