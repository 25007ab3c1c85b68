# %postun: %systemd_postun_with_restart — restart after an upgrade.
# rpm has no purge: the user, /var/lib/clawnode and /etc/clawnode/token stay
# (Fedora's guidelines never remove users); see packaging/README.md.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl --no-block try-restart clawnode.service >/dev/null 2>&1 || :
    fi
fi
exit 0
