#!/usr/bin/env bash
# Checks deploy/ with the tools a fleet team uses, installed from PyPI into a
# cached virtualenv (CLAWNODE_TOOLS_CACHE, default ~/.cache/clawnode-tools):
#   ansible-playbook --syntax-check, ansible-lint (production profile),
#   the role's template rendered and checked by `clawnode check-config`,
#   kubernetes-validate (bundled schemas, offline) on the manifests,
#   cloud-init's own JSON schema (from Debian's cloud-init package, unpacked
#   into the cache, not installed) on the user-data, the configs each
#   method writes checked by the real binary (deploy/check.py), and the
#   Grafana dashboard against the gateway's metrics (deploy/check_dashboard.py).
# Installs nothing on the system and contacts no host.
set -uo pipefail
cd "$(dirname "$0")" || exit 1

CACHE="${CLAWNODE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clawnode-tools}"
VENV="$CACHE/ansible-venv"
PINS=(ansible-core==2.19.14 ansible-lint==26.10.1 kubernetes-validate==1.37.0 PyYAML==6.0.3 jsonschema==4.26.0)
if ! "$VENV/bin/python" -m pip show ansible-core ansible-lint kubernetes-validate >/dev/null 2>&1; then
    echo "== installing ${PINS[*]} into $VENV"
    if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "${PINS[@]}"; }; then
        echo "deploy/check.sh: cannot install the tools"
        exit 1
    fi
fi
export PATH="$VENV/bin:$PATH"

SCHEMA_DIR="$CACHE/cloud-init-schema"
SCHEMA="$SCHEMA_DIR/schema-cloud-config-v1.json"
if [ ! -s "$SCHEMA" ]; then
    echo "== fetching cloud-init's schema (Debian package cloud-init, unpacked only)"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download cloud-init >/dev/null 2>&1) || { apt-get update -qq && (cd "$tmp" && apt-get download cloud-init >/dev/null); }
    dpkg-deb -x "$tmp"/cloud-init_*.deb "$tmp/x"
    mkdir -p "$SCHEMA_DIR"
    cp "$(find "$tmp/x" -name schema-cloud-config-v1.json | head -1)" "$SCHEMA"
    rm -rf "$tmp"
fi

echo "== building clawnode (for check-config)"
(cd .. && cargo build --quiet --locked) || exit 1
BIN="$(cd .. && pwd)/target/debug/clawnode"

passed=0
failed=0
step() { # description, command...
    local what="$1"
    shift
    if out=$("$@" 2>&1); then
        echo "ok   - $what"
        passed=$((passed + 1))
    else
        echo "FAIL - $what"
        echo "$out" | tail -30 | sed 's/^/       /'
        failed=$((failed + 1))
    fi
}

cd ansible || exit 1
step "ansible-playbook --syntax-check site.yml" \
    ansible-playbook -i inventory.example.ini --syntax-check site.yml
step "ansible-lint (production profile, offline)" \
    ansible-lint --offline --profile production --nocolor site.yml roles/
RENDER=$(mktemp -d)
step "the role's template renders for an agent and a gateway" \
    ansible-playbook -i tests/inventory.ini tests/render.yml -e "out=$RENDER"
cd .. || exit 1
step "kubernetes-validate --strict (Kubernetes 1.37 schemas)" \
    kubernetes-validate --strict --quiet kubernetes/*.yaml
step "the Grafana dashboard: unique ids, known metrics, no overlaps" \
    "$VENV/bin/python3" check_dashboard.py grafana/clawnode-dashboard.json

# check.py prints its own ok/FAIL lines.
out=$("$VENV/bin/python" check.py "$BIN" "$SCHEMA" "$RENDER" 2>&1)
echo "$out"
passed=$((passed + $(echo "$out" | grep -c '^ok ')))
failed=$((failed + $(echo "$out" | grep -c '^FAIL ')))
rm -rf "$RENDER"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
