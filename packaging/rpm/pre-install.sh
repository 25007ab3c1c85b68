# %pre: the clawnode system user and group.
getent group clawnode >/dev/null || groupadd -r clawnode
getent passwd clawnode >/dev/null || \
    useradd -r -g clawnode -d /var/lib/clawnode -s /sbin/nologin \
        -c "clawnode fleet-presence daemon" clawnode
exit 0
