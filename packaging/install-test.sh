#!/usr/bin/env bash
# Install test (run by .ci/run, as root): build both packages, lint them,
# install the .deb in a throw-away root (this machine's / under an overlay
# whose writes go to a tmpfs, in a private mount namespace, no systemd
# running in it, as in a container: the install must still succeed), check
# what it installed, boot that root under systemd (systemd-test.sh),
# upgrade over a locally edited config, purge, and check what is left.
# This machine's /etc, /usr and /var are never written to: the last check
# says that the host's clawnode state is what it was before.
# Prints one line per check and a final "N passed, N failed".
set -uo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test: needs root (mounts a throw-away root and installs the .deb in it); skipped"
    exit 0
fi
# Everything below runs in a mount namespace of its own: the throw-away
# root's mounts are invisible to the host and vanish with the test.
if [ -z "${CLAWNODE_INSTALL_TEST_UNSHARED:-}" ]; then
    CLAWNODE_INSTALL_TEST_UNSHARED=1 exec unshare --mount --propagation private -- "$BASH" "$(realpath "$0")" "$@"
fi
cd "$(dirname "$0")/.." || exit 1
# shellcheck source=SCRIPTDIR/throwaway-root.sh
. packaging/throwaway-root.sh

WORK=$(mktemp -d /tmp/clawnode-install-test.XXXXXX)
ROOT="$WORK/root"
trap 'release_dir "$WORK"' EXIT
trap 'exit 130' INT TERM

passed=0
failed=0
check() { # description, then a command that must succeed
    local what="$1"
    shift
    if "$@" >"$WORK/check.out" 2>&1; then
        echo "ok   - $what"
        passed=$((passed + 1))
    else
        echo "FAIL - $what"
        sed 's/^/       /' "$WORK/check.out" | head -40
        failed=$((failed + 1))
    fi
}
inroot() { chroot "$ROOT" "$@"; }
absent() { ! inroot test -e "$1" && ! inroot test -L "$1"; }
no_user() { ! inroot getent passwd clawnode && ! inroot getent group clawnode; }
empty_output() { local out; out="$("$@" 2>&1)" || { echo "$out"; return 1; }; [ -z "$out" ] || { echo "$out"; return 1; }; }

# The host's clawnode state, to compare before and after: for each path
# whether it exists, every file's type, mode, owner, size, mtime, link
# target and content hash; the user, the group and dpkg's record. A
# clawnode running on the host may rewrite its own device registry
# (registry.sqlite and its -wal/-shm files; pins.json and
# pins.json.migrated in older versions or while it upgrades) and
# device-token.json while the test runs (an agent connects, a device token
# is issued): for those only their existence is compared.
host_state() {
    local p live='-name registry.sqlite -o -name registry.sqlite-wal -o -name registry.sqlite-shm -o -name pins.json -o -name pins.json.migrated -o -name device-token.json'
    for p in /var/lib/clawnode /etc/clawnode /usr/bin/clawnode \
        /usr/lib/systemd/system/clawnode.service \
        /etc/systemd/system/multi-user.target.wants/clawnode.service; do
        if [ -e "$p" ] || [ -L "$p" ]; then
            # shellcheck disable=SC2086 # $live is find's expression, split on purpose
            find "$p" \( $live \) -printf '%p exists\n' -o -printf '%p %y %m %U:%G %s %T@ -> %l\n' | sort
            # shellcheck disable=SC2086
            find "$p" -type f ! \( $live \) -exec sha256sum {} + | sort -k 2
        else
            echo "absent $p"
        fi
    done
    getent passwd clawnode || echo "no user clawnode"
    getent group clawnode || echo "no group clawnode"
    dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' clawnode 2>/dev/null || echo "dpkg: no clawnode"
}
host_state >"$WORK/host-state.before"

need_pkgs=()
command -v lintian >/dev/null || need_pkgs+=(lintian)
command -v rpmlint >/dev/null || need_pkgs+=(rpmlint)
command -v rpm >/dev/null || need_pkgs+=(rpm)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
command -v man >/dev/null || need_pkgs+=(man-db)
command -v systemd-nspawn >/dev/null || need_pkgs+=(systemd-container)
command -v shellcheck >/dev/null || need_pkgs+=(shellcheck)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo "== installing ${need_pkgs[*]}"
    apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

packaging/build.sh || { echo "install-test: build failed"; echo "0 passed, 1 failed"; exit 1; }
deb=$(ls target/packages/clawnode_*.deb)
debname=$(basename "$deb")
rpmfile=$(ls target/packages/clawnode-*.rpm)

# --- lint -------------------------------------------------------------------
# Warnings we accept, each explained in packaging/README.md.
allowed_warnings='^$'
lintian_ok() {
    local out
    out=$(lintian --fail-on error --display-info "$deb" 2>&1) || { echo "$out"; return 1; }
    echo "$out"
    # Any warning not on the allow-list fails.
    ! echo "$out" | grep '^W: ' | grep -Ev "$allowed_warnings"
}
check "lintian: no errors, no unexplained warnings" lintian_ok
rpmlint_ok() {
    local out
    out=$(rpmlint -c packaging/rpmlint.toml "$rpmfile" 2>&1)
    echo "$out"
    echo "$out" | grep -Eq '[^0-9]0 errors'
}
check "rpmlint: no errors" rpmlint_ok
check "rpm: /etc/clawnode/clawnode.toml is %config(noreplace)" \
    sh -c "rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' '$rpmfile' | grep -Fx '/etc/clawnode/clawnode.toml cn'"
check "rpm: unit in /usr/lib/systemd/system" \
    sh -c "rpm -qlp '$rpmfile' | grep -Fx /usr/lib/systemd/system/clawnode.service"
check "rpm: scriptlets create the user and use systemctl only where systemd runs" \
    sh -c "rpm -qp --scripts '$rpmfile' | grep -q 'useradd -r' && rpm -qp --scripts '$rpmfile' | grep -q '/run/systemd/system'"
check "maintainer scripts and packaging scripts pass shellcheck" \
    sh -c 'shellcheck -s sh packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm packaging/rpm/*.sh && shellcheck packaging/*.sh deploy/check.sh'

# --- the throw-away root -------------------------------------------------------
# / under an overlay (writes in a tmpfs); the overlay does not show the
# host's submounts, so /dev is bound in and /proc, /sys mounted fresh; /run
# and /tmp are empty tmpfs, so no /run/systemd/system: systemd is not
# running there, as in a container or chroot.
make_root() {
    throwaway_root / "$WORK/scratch" "$ROOT" || return 1
    mount --rbind /dev "$ROOT/dev" || return 1
    mount -t proc proc "$ROOT/proc" || return 1
    mount -t sysfs sysfs "$ROOT/sys" || return 1
    mount -t tmpfs -o mode=0755 tmpfs "$ROOT/run" || return 1
    mkdir -m 1777 "$ROOT/run/lock" || return 1
    mount -t tmpfs -o mode=1777 tmpfs "$ROOT/tmp" || return 1
    cp "$deb" "$ROOT/tmp/$debname"
}
if ! make_root; then
    echo "FAIL - set up the throw-away root (overlay of / on a tmpfs)"
    echo "$passed passed, $((failed + 1)) failed"
    exit 1
fi

# --- install (every step inside the throw-away root) ----------------------------
# Start from no clawnode at all: the root is a copy of the host, which may
# have the package or a hand-started instance's state; purge and delete them
# in the root (the host keeps its own).
inroot dpkg --purge clawnode >/dev/null 2>&1 || true
inroot rm -rf /var/lib/clawnode /etc/clawnode
check "apt install ./$debname succeeds without a running systemd" \
    inroot sh -c "! test -e /run/systemd/system && apt-get install -y -qq /tmp/$debname"
check "/usr/bin/clawnode --version" inroot sh -c '/usr/bin/clawnode --version | grep -Fx "clawnode 0.1.0"'
check "system user and group clawnode" inroot sh -c 'getent passwd clawnode | grep -q ":/var/lib/clawnode:/usr/sbin/nologin$" && getent group clawnode'
check "/etc/clawnode/clawnode.toml is a conffile" \
    inroot sh -c "dpkg-query -W -f='\${Conffiles}' clawnode | grep -q '^ /etc/clawnode/clawnode.toml '"
check "the packaged config is valid (clawnode check-config)" inroot /usr/bin/clawnode check-config
check "unit installed in /usr/lib/systemd/system" inroot test -f /usr/lib/systemd/system/clawnode.service
check "unit enabled (multi-user.target.wants)" inroot test -L /etc/systemd/system/multi-user.target.wants/clawnode.service
check "systemd-analyze verify prints nothing" empty_output inroot systemd-analyze verify /usr/lib/systemd/system/clawnode.service
check "systemd-analyze security <= 2.5" \
    inroot systemd-analyze security --offline=true --threshold=25 --no-pager /usr/lib/systemd/system/clawnode.service
check "man page installed" inroot test -f /usr/share/man/man1/clawnode.1.gz
check "changelog and copyright installed" \
    inroot test -f /usr/share/doc/clawnode/changelog.Debian.gz -a -f /usr/share/doc/clawnode/copyright
check "the service user can run clawnode and keep state" \
    inroot runuser -u clawnode -- env HOME=/nonexistent /usr/bin/clawnode identity --state-dir /tmp/clawnode-install-test-state

# --- the installed unit under a real systemd (a throw-away nspawn container) ---
# It boots an overlay of the install root (overlays stack two deep).
systemd_out=$(packaging/systemd-test.sh "$ROOT" 2>&1)
echo "$systemd_out" | grep -v ' passed, '
passed=$((passed + $(echo "$systemd_out" | grep -c '^ok ')))
failed=$((failed + $(echo "$systemd_out" | grep -c '^FAIL ')))

# --- upgrade keeps a locally edited conffile ----------------------------------
inroot sh -c "echo '# local edit' >>/etc/clawnode/clawnode.toml"
check "reinstall keeps the edited conffile" inroot sh -c "
    dpkg -i --force-confold '/tmp/$debname' >/dev/null &&
    tail -1 /etc/clawnode/clawnode.toml | grep -Fx '# local edit'"

# --- purge ----------------------------------------------------------------------
inroot sh -c 'mkdir -p /var/lib/clawnode && echo state >/var/lib/clawnode/instance-id && echo token >/etc/clawnode/token'
inroot rm -rf /tmp/clawnode-install-test-state
check "dpkg --purge clawnode" inroot dpkg --purge clawnode
check "purge removed /usr/bin/clawnode" absent /usr/bin/clawnode
check "purge removed the unit and its enablement" inroot sh -c '
    ! test -e /usr/lib/systemd/system/clawnode.service &&
    ! test -L /etc/systemd/system/multi-user.target.wants/clawnode.service &&
    ! test -e /var/lib/systemd/deb-systemd-helper-enabled/clawnode.service.dsh-also'
check "purge removed /etc/clawnode" absent /etc/clawnode
check "purge removed /var/lib/clawnode" absent /var/lib/clawnode
check "purge removed the user and group" no_user
check "dpkg forgot the package" inroot sh -c '! dpkg-query -W clawnode 2>/dev/null | grep -q .'

# --- the host was not touched -------------------------------------------------------
release_dir "$WORK/root" && release_dir "$WORK/scratch"
check "throw-away root torn down (nothing left mounted)" \
    sh -c "! findmnt -rn -o TARGET | grep -F '$WORK'"
host_state >"$WORK/host-state.after"
check "host state untouched (/var/lib/clawnode, /etc/clawnode, /usr/bin/clawnode, unit, user, dpkg)" \
    diff "$WORK/host-state.before" "$WORK/host-state.after"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
