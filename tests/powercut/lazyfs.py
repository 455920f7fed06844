"""A FUSE file system for power-cut tests, in the spirit of LazyFS: what was not fsync'ed
is lost when the power goes.

Every file holds its content as of its last `fsync` (the durable layer) and the writes and
truncations since (the volatile layer, replayed over it for reads). Writing `off` to the
control file `/.power` cuts the power (reading it says how often the file system was
mounted, and whether it is off): the volatile layer of every file is thrown away
(`off partial SEED`: a random prefix of each file's unsynced operations is kept instead, as
a disk that wrote back some of its cache in order), and every later operation fails with
EIO until the file system is unmounted; it then mounts itself again on the same directory,
the durable layer only (the kernel's page cache for the mount goes with the unmount).
Simplification, said so: the namespace (create, unlink, rename, mkdir) is durable at once,
as on a journaling file system that commits metadata before data; a file created and never
synced comes back empty. Data is in memory; the process runs single-threaded, so a power
cut falls between two operations.

Usage: python lazyfs.py MOUNTPOINT (stays in the foreground; `quit` to the control file,
then an unmount, ends it).
"""

from __future__ import annotations

import errno
import os
import random
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import mfusepy

CONTROL = "/.power"


@dataclass(eq=False)
class Node:
    directory: bool = False
    durable: bytes = b""
    ops: list[tuple[int, bytes | int]] = field(default_factory=list)
    """Since the last fsync: (offset, data) writes and (-1, length) truncations."""
    data: bytearray = field(default_factory=bytearray)
    mode: int = 0o644
    mtime: int = field(default_factory=time.time_ns)

    def sync(self) -> None:
        self.durable = bytes(self.data)
        self.ops.clear()

    def power_off(self, keep: int) -> None:
        """Back to the durable content plus the first `keep` unsynced operations."""
        data = bytearray(self.durable)
        for offset, what in self.ops[:keep]:
            _apply(data, offset, what)
        self.data = data
        self.durable = bytes(data)
        self.ops.clear()


def _apply(data: bytearray, offset: int, what: bytes | int) -> None:
    if offset < 0:
        assert isinstance(what, int)
        del data[what:]
        data.extend(b"\0" * (what - len(data)))
        return
    assert isinstance(what, bytes)
    if offset > len(data):
        data.extend(b"\0" * (offset - len(data)))
    data[offset:offset + len(what)] = what


class LazyFS(mfusepy.Operations):
    use_ns = True

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"/": Node(directory=True, mode=0o755)}
        self.handles: dict[int, Node] = {}
        self.next_fh = 1
        self.dead = False
        self.quitting = False
        self.cuts = 0
        self.mounts = 0

    # --- power ------------------------------------------------------------------------

    def _alive(self, path: str | None = None) -> None:
        if self.dead and path != CONTROL:
            raise mfusepy.FuseOSError(errno.EIO)

    def _power(self, command: str) -> None:
        words = command.split()
        if words == ["quit"]:  # the next unmount is the last
            self.quitting = True
            return
        if not words or words[0] != "off":
            raise mfusepy.FuseOSError(errno.EINVAL)
        rng = random.Random(int(words[2])) if len(words) > 2 and words[1] == "partial" else None
        for node in set(self.nodes.values()) | set(self.handles.values()):
            if not node.directory:
                node.power_off(rng.randint(0, len(node.ops)) if rng else 0)
        self.dead = True
        self.cuts += 1

    def power_on(self) -> None:
        self.dead = False
        self.handles.clear()
        self.mounts += 1

    # --- file system ------------------------------------------------------------------

    def _node(self, path: str) -> Node:
        node = self.nodes.get(path)
        if node is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return node

    def _handle(self, path: str, fh: int | None) -> Node:
        if fh is not None and fh in self.handles:
            return self.handles[fh]
        return self._node(path)

    def _new_handle(self, node: Node) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node
        return fh

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path == CONTROL:
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": 64}
        self._alive()
        node = self._handle(path, fh)
        kind = stat.S_IFDIR if node.directory else stat.S_IFREG
        return {"st_mode": kind | node.mode, "st_nlink": 2 if node.directory else 1,
                "st_size": len(node.data), "st_mtime": node.mtime, "st_ctime": node.mtime,
                "st_atime": node.mtime, "st_uid": os.getuid(), "st_gid": os.getgid(),
                "st_blocks": (len(node.data) + 511) // 512}

    def readdir(self, path: str, fh: int) -> list[str]:
        self._alive()
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):] for p in self.nodes
                 if p.startswith(prefix) and p != prefix and "/" not in p[len(prefix):]}
        return [".", "..", *sorted(names)]

    def mkdir(self, path: str, mode: int) -> int:
        self._alive()
        self.nodes[path] = Node(directory=True, mode=mode & 0o7777)
        return 0

    def rmdir(self, path: str) -> int:
        self._alive()
        self.nodes.pop(path, None)
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        if path == CONTROL:
            return 0
        self._alive()
        node = self.nodes.get(path)
        if node is None:
            node = self.nodes[path] = Node(mode=mode & 0o7777)
        return self._new_handle(node)

    def open(self, path: str, flags: int) -> int:
        if path == CONTROL:
            return 0
        self._alive()
        node = self._node(path)
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return self._new_handle(node)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path == CONTROL:
            return f"{self.mounts} {int(self.dead)}\n".encode()[offset:offset + size]
        self._alive()
        return bytes(self._handle(path, fh).data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if path == CONTROL:
            self._power(data.decode())
            return len(data)
        self._alive()
        node = self._handle(path, fh)
        data = bytes(data)
        _apply(node.data, offset, data)
        node.ops.append((offset, data))
        node.mtime = time.time_ns()
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if path == CONTROL:
            return 0
        self._alive()
        node = self._handle(path, fh)
        _apply(node.data, -1, length)
        node.ops.append((-1, length))
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._alive()
        self._handle(path, fh).sync()
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self._alive()
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    def unlink(self, path: str) -> int:
        self._alive()
        self._node(path)
        del self.nodes[path]
        return 0

    def rename(self, old: str, new: str) -> int:
        self._alive()
        node = self._node(old)
        for path in [p for p in self.nodes if p == old or p.startswith(old + "/")]:
            self.nodes[new + path[len(old):]] = self.nodes.pop(path)
        self.nodes[new] = node
        return 0

    def chmod(self, path: str, mode: int) -> int:
        self._alive()
        self._node(path).mode = mode & 0o7777
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._alive()
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self._alive()
        self._node(path).mtime = time.time_ns()
        return 0

    def access(self, path: str, amode: int) -> int:
        if path != CONTROL:
            self._alive()
            self._node(path)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        used = sum(len(n.data) for n in self.nodes.values()) // 4096
        blocks = 1 << 20  # 4 GiB
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": blocks - used,
                "f_bavail": blocks - used, "f_files": 1 << 20, "f_ffree": 1 << 20,
                "f_namemax": 255}


def main() -> None:
    mountpoint = sys.argv[1]
    fs = LazyFS()
    while not fs.quitting:
        fs.power_on()
        # Single-threaded, so that a power cut falls between two operations; no attribute
        # caching beyond what an unmount drops.
        mfusepy.FUSE(fs, mountpoint, foreground=True, nothreads=True, fsname="lazyfs",
                     attr_timeout=0, entry_timeout=0)


if __name__ == "__main__":
    main()
