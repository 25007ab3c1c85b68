# %post: %systemd_post, then enable and start on first install (without
# blocking: an agent is ready only once its gateway accepts it).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable clawnode.service >/dev/null 2>&1 || :
        systemctl --no-block start clawnode.service >/dev/null 2>&1 || :
    fi
fi
exit 0
