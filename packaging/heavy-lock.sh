# Sourced by debian-root.sh and build-deb-emulated.sh: heavy_lock takes this machine's
# heavy-job lock, the file $HEAVY_LOCK names (default /tmp/heavy.lock; empty: none), on
# fd 9 until the script exits. Unless a process this one runs under holds it already
# (`flock /tmp/heavy.lock make test`): that one would wait for this one, forever.
heavy_lock() {
    local lock=${HEAVY_LOCK-/tmp/heavy.lock} inode holder pid
    [ -n "$lock" ] || return 0
    exec 9>>"$lock"
    inode=$(stat -c %i "$lock")
    # /proc/locks: "1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF"; a waiter's
    # line has "->" in the second field.
    for holder in $(awk -v inode="$inode" \
            '$2 == "FLOCK" { n = split($6, id, ":"); if (id[n] == inode) print $5 }' /proc/locks); do
        pid=$$
        while [ "$pid" -gt 1 ]; do
            [ "$pid" = "$holder" ] && return 0
            pid=$(awk '/^PPid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 1)
        done
    done
    flock 9
}
