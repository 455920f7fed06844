"""The state directory belongs to the agent's user alone, whatever the umask it inherited.

The process umask becomes 077 before anything is created, so every file and folder the
agent makes is 0600 or 0700; the state directory is created (also when `store.path` lies
outside it: the sockets live there) and an existing one, or a file in it, that others
could read is narrowed to its owner. A directory of another user is left as it is.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077


def prepare_state_dir(path: Path) -> list[str]:
    """Make `path` the agent's private directory; what was narrowed, for the log.
    Raises OSError when it cannot be created."""
    os.umask(PRIVATE_UMASK)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    narrowed = []
    for entry in (path, *sorted(path.iterdir())):
        st = entry.lstat()
        if st.st_uid != os.geteuid() or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            os.chmod(entry, mode & 0o700)
            narrowed.append(f"{entry} {mode:04o} -> {mode & 0o700:04o}")
    return narrowed
