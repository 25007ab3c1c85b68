#!/usr/bin/env bash
# Install test (run by .ci/run, as root): build both packages, lint them,
# install the .deb on this machine (where systemd is not PID 1, as in a
# container: the install must still succeed), check what it installed,
# upgrade over a locally edited config, purge, and check what is left.
# Prints one line per check and a final "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test: needs root (dpkg -i); skipped"
    exit 0
fi

passed=0
failed=0
check() { # description, then a command that must succeed
    local what="$1"
    shift
    if "$@" >/tmp/clawnode-install-test.out 2>&1; then
        echo "ok   - $what"
        passed=$((passed + 1))
    else
        echo "FAIL - $what"
        sed 's/^/       /' /tmp/clawnode-install-test.out | head -40
        failed=$((failed + 1))
    fi
}
absent() { ! test -e "$1" && ! test -L "$1"; }
no_user() { ! getent passwd clawnode && ! getent group clawnode; }
empty_output() { local out; out="$("$@" 2>&1)" || { echo "$out"; return 1; }; [ -z "$out" ] || { echo "$out"; return 1; }; }

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

# --- install ------------------------------------------------------------------
dpkg --purge clawnode >/dev/null 2>&1 || true
check "apt install ./$(basename "$deb") succeeds without a running systemd" \
    apt-get install -y -qq "./$deb"
check "/usr/bin/clawnode --version" sh -c '/usr/bin/clawnode --version | grep -Fx "clawnode 0.1.0"'
check "system user and group clawnode" sh -c 'getent passwd clawnode | grep -q ":/var/lib/clawnode:/usr/sbin/nologin$" && getent group clawnode'
check "/etc/clawnode/clawnode.toml is a conffile" \
    sh -c "dpkg-query -W -f='\${Conffiles}' clawnode | grep -q '^ /etc/clawnode/clawnode.toml '"
check "the packaged config is valid (clawnode check-config)" /usr/bin/clawnode check-config
check "unit installed in /usr/lib/systemd/system" test -f /usr/lib/systemd/system/clawnode.service
check "unit enabled (multi-user.target.wants)" test -L /etc/systemd/system/multi-user.target.wants/clawnode.service
check "systemd-analyze verify prints nothing" empty_output systemd-analyze verify /usr/lib/systemd/system/clawnode.service
check "systemd-analyze security <= 2.5" \
    systemd-analyze security --offline=true --threshold=25 --no-pager /usr/lib/systemd/system/clawnode.service
check "man page installed" test -f /usr/share/man/man1/clawnode.1.gz
check "changelog and copyright installed" \
    test -f /usr/share/doc/clawnode/changelog.Debian.gz -a -f /usr/share/doc/clawnode/copyright
check "the service user can run clawnode and keep state" \
    runuser -u clawnode -- env HOME=/nonexistent /usr/bin/clawnode identity --state-dir /tmp/clawnode-install-test-state

# --- the installed unit under a real systemd (a throw-away nspawn container) ---
systemd_out=$(packaging/systemd-test.sh 2>&1)
echo "$systemd_out" | grep -v ' passed, '
passed=$((passed + $(echo "$systemd_out" | grep -c '^ok ')))
failed=$((failed + $(echo "$systemd_out" | grep -c '^FAIL ')))

# --- upgrade keeps a locally edited conffile ----------------------------------
echo '# local edit' >>/etc/clawnode/clawnode.toml
check "reinstall keeps the edited conffile" sh -c "
    dpkg -i --force-confold '$deb' >/dev/null &&
    tail -1 /etc/clawnode/clawnode.toml | grep -Fx '# local edit'"

# --- purge ----------------------------------------------------------------------
mkdir -p /var/lib/clawnode && echo state >/var/lib/clawnode/instance-id
echo token >/etc/clawnode/token
rm -rf /tmp/clawnode-install-test-state
check "dpkg --purge clawnode" dpkg --purge clawnode
check "purge removed /usr/bin/clawnode" absent /usr/bin/clawnode
check "purge removed the unit and its enablement" sh -c '
    ! test -e /usr/lib/systemd/system/clawnode.service &&
    ! test -L /etc/systemd/system/multi-user.target.wants/clawnode.service &&
    ! test -e /var/lib/systemd/deb-systemd-helper-enabled/clawnode.service.dsh-also'
check "purge removed /etc/clawnode" absent /etc/clawnode
check "purge removed /var/lib/clawnode" absent /var/lib/clawnode
check "purge removed the user and group" no_user
check "dpkg forgot the package" sh -c '! dpkg-query -W clawnode 2>/dev/null | grep -q .'

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
