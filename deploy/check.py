"""Checks of deploy/ beyond what ansible-lint and kubernetes-validate do:
every clawnode.toml the deployment methods write is valid for the real
binary (`clawnode check-config`), the cloud-init user-data matches
cloud-init's schema, and the Kubernetes objects wire up (names, mounts).

Usage: check.py CLAWNODE_BINARY CLOUD_INIT_SCHEMA_JSON RENDER_DIR
Prints "ok - ..." / "FAIL - ..." lines; exit status 1 on any failure.
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import tomllib
import urllib.parse

import jsonschema
import yaml

HERE = pathlib.Path(__file__).resolve().parent
binary, cloud_schema, render_dir = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
failures = 0


def report(ok, what, detail=""):
    global failures
    print(("ok   - " if ok else "FAIL - ") + what)
    if not ok:
        failures += 1
        for line in str(detail).splitlines()[:20]:
            print("       " + line)


def check_config(what, toml_text, expect, expect_prefix=()):
    """Runs `clawnode check-config` on a config, its token file pointed at a
    temporary token, and checks the printed role/URL lines (`expect`: whole
    lines; `expect_prefix`: lines starting so)."""
    with tempfile.TemporaryDirectory() as tmp:
        token = pathlib.Path(tmp, "token")
        token.write_text("a-test-token-of-some-length\n")
        text = toml_text
        for path in ("/etc/clawnode/token", "/etc/clawnode/secret/token"):
            text = text.replace(f'"{path}"', f'"{token}"')
        cfg = pathlib.Path(tmp, "clawnode.toml")
        cfg.write_text(text)
        run = subprocess.run(
            [binary, "check-config", "--config", str(cfg)],
            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": tmp},
        )
        lines = run.stdout.splitlines()
        ok = (run.returncode == 0 and all(line in lines for line in expect)
              and all(any(l.startswith(p) for l in lines) for p in expect_prefix))
        report(ok, f"{what}: clawnode check-config accepts it ({', '.join([*expect, *expect_prefix])})",
               run.stdout + run.stderr)


# --- Ansible: the role's template, rendered for both roles -------------------
check_config("ansible agent config", (render_dir / "agent.toml").read_text(),
             ["# role: agent", 'url = "ws://10.0.0.10:18789"'])
check_config("ansible gateway config", (render_dir / "gateway.toml").read_text(),
             ["# role: gateway", 'listen = "0.0.0.0:18789"', 'public_names = ["localhost"]'],
             # Its own join token file, generated; the agents get a created one.
             ["# token: none yet; the gateway generates"])

# --- cloud-init ----------------------------------------------------------------
user_data_path = HERE / "cloud-init" / "user-data.yaml"
user_data_text = user_data_path.read_text()
report(user_data_text.startswith("#cloud-config\n"), "cloud-init: starts with #cloud-config")
user_data = yaml.safe_load(user_data_text)
schema = json.loads(pathlib.Path(cloud_schema).read_text())
errors = sorted(jsonschema.Draft4Validator(schema).iter_errors(user_data), key=str)
report(not errors, "cloud-init: user-data matches cloud-init's schema",
       "\n".join(e.message for e in errors))
files = {f["path"]: f["content"] for f in user_data.get("write_files", [])}
report("/etc/clawnode/token" in files, "cloud-init: writes the token file")
check_config("cloud-init config", files.get("/etc/clawnode/clawnode.toml", ""),
             ["# role: agent"])

# --- Kubernetes ----------------------------------------------------------------
docs = []
for path in sorted((HERE / "kubernetes").glob("*.yaml")):
    docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
by_kind = {}
for name, d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
report(all(d["metadata"].get("namespace") == "clawnode" for _, d in docs if d["kind"] != "Namespace"),
       "kubernetes: every object is in namespace clawnode")
for cm in ("clawnode-agent", "clawnode-gateway"):
    text = by_kind.get("ConfigMap", {}).get(cm, {}).get("data", {}).get("clawnode.toml", "")
    role = "gateway" if cm.endswith("gateway") else "agent"
    check_config(f"kubernetes ConfigMap {cm}", text, [f"# role: {role}"],
                 ["# token: none yet; the gateway generates"] if role == "gateway" else [])
# The agents dial the gateway by a name it answers to (any other is 421).
configs = {cm: tomllib.loads(by_kind["ConfigMap"][cm]["data"]["clawnode.toml"])
           for cm in ("clawnode-agent", "clawnode-gateway")}
agent_host = urllib.parse.urlsplit(configs["clawnode-agent"]["url"]).hostname
report(agent_host in configs["clawnode-gateway"]["gateway"].get("public_names", []),
       "kubernetes: the agents' url names the gateway by one of its public_names", agent_host)


def pod_spec(kind, name):
    return by_kind[kind][name]["spec"]["template"]["spec"]

for kind, name in (("DaemonSet", "clawnode-agent"), ("Deployment", "clawnode-gateway")):
    spec = pod_spec(kind, name)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = [m for c in spec["containers"] for m in c["volumeMounts"]]
    report(all(m["name"] in volumes for m in mounts), f"kubernetes {kind}: every mount has a volume")
    refs = [v["configMap"]["name"] for v in volumes.values() if "configMap" in v]
    refs += [v["secret"]["secretName"] for v in volumes.values() if "secret" in v]
    known = set(by_kind.get("ConfigMap", {})) | set(by_kind.get("Secret", {}))
    report(all(r in known for r in refs), f"kubernetes {kind}: referenced ConfigMaps and Secrets exist")
    hardened = all(
        c["securityContext"].get("readOnlyRootFilesystem")
        and c["securityContext"].get("allowPrivilegeEscalation") is False
        and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        for c in spec["containers"]
    )
    report(hardened, f"kubernetes {kind}: containers read-only, no privilege escalation, no capabilities")
# The Secret holds the agents' created join token: the gateway does not
# mount it (its own tokens are generated on its state volume).
gw_secrets = [v["secret"]["secretName"] for v in pod_spec("Deployment", "clawnode-gateway")["volumes"]
              if "secret" in v]
ds_secrets = [v["secret"]["secretName"] for v in pod_spec("DaemonSet", "clawnode-agent")["volumes"]
              if "secret" in v]
report(gw_secrets == [] and ds_secrets == ["clawnode-token"],
       "kubernetes: the join token Secret is mounted by the agents only", f"{gw_secrets} {ds_secrets}")
ds = pod_spec("DaemonSet", "clawnode-agent")
report(ds.get("hostNetwork") is True and ds.get("dnsPolicy") == "ClusterFirstWithHostNet",
       "kubernetes DaemonSet: host network, cluster DNS")
svc = by_kind["Service"]["clawnode-gateway"]["spec"]
gw_labels = by_kind["Deployment"]["clawnode-gateway"]["spec"]["template"]["metadata"]["labels"]
report(all(gw_labels.get(k) == v for k, v in svc["selector"].items()),
       "kubernetes Service: selects the gateway pods")

sys.exit(1 if failures else 0)
