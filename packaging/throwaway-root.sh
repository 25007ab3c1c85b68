# shellcheck shell=bash
# Sourced by install-test.sh and systemd-test.sh (as root): a throw-away
# root file system, and its removal.

# throwaway_root LOWER SCRATCH ROOT: mounts at ROOT an overlay whose lower
# layer is the directory LOWER (read-only, never written) and whose writes
# go to a tmpfs mounted at SCRATCH. Mounts below LOWER (e.g. /proc, /dev)
# are not part of the overlay: their mount points show the directories
# underneath. Overlays stack up to two deep, so LOWER may itself be one.
throwaway_root() {
    local lower="$1" scratch="$2" root="$3"
    mkdir -p "$scratch" "$root" || return 1
    mount -t tmpfs tmpfs "$scratch" || return 1
    mkdir -p "$scratch/up" "$scratch/work" || return 1
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$scratch/up,workdir=$scratch/work" "$root"
}

# release_dir DIR: unmounts everything mounted at or below DIR (lazily when
# busy), then removes DIR, without crossing into a file system that is
# still mounted there (that would be, say, the host's /dev bound into a
# root): if a mount remains, DIR is left in place and this fails.
release_dir() {
    local dir="$1" m
    [ -n "$dir" ] && [ "$dir" != / ] && [ -d "$dir" ] || return 0
    # Deepest first; umount -R takes each one's submounts, -l the busy ones.
    for m in $(findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1 || $0 == d' | sort -r); do
        mountpoint -q "$m" || continue
        umount -R "$m" 2>/dev/null || umount -R -l "$m" 2>/dev/null || umount -l "$m"
    done
    if findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1 || $0 == d' | grep -q .; then
        echo "release_dir: still mounted under $dir; left in place" >&2
        return 1
    fi
    rm -rf --one-file-system "$dir"
}
