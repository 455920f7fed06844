"""`make demo` as a newcomer runs it: tools/demo.py prints the fleet view's address, and that
page, logged in, shows the demo gateway's compressor within a minute; Ctrl-C stops all."""

from __future__ import annotations

import http.cookiejar
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from support import agent_env

from agent.testing import stop_process, wait_until
from agent.testing.postgres import postgres_bin_dir

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    postgres_bin_dir() is None, reason="PostgreSQL's server is not installed")]
ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_the_whole_chain_to_the_fleet_view(numba_cache: Path) -> None:
    demo = subprocess.Popen([sys.executable, str(ROOT / "tools" / "demo.py")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**agent_env(numba_cache),
                                 "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin:/usr/sbin"})
    lines: list[str] = []
    try:
        assert demo.stdout is not None

        def address() -> str | None:
            line = demo.stdout.readline() if demo.stdout else ""
            lines.append(line)
            found = re.search(r"fleet view: (http://\S+) \(log in as (\S+) / (\S+)\)", line)
            if demo.poll() is not None:
                raise AssertionError("the demo stopped:\n" + "".join(lines))
            return found.group(0) if found else None

        wait_until(address, timeout_s=120, what="the fleet view's address")
        url, user, password = re.search(r"(http://\S+) \(log in as (\S+) / (\S+)\)",
                                        lines[-1]).groups()  # type: ignore[union-attr]
        base = url.split("/gateway/")[0]
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        form = urllib.parse.urlencode({"user": user, "password": password}).encode()
        opener.open(base + "/login", data=form, timeout=10)

        def compressor_shown() -> bool:
            page = opener.open(url, timeout=10).read().decode()
            return "discharge_temp_c" in page and "<svg" in page

        wait_until(compressor_shown, timeout_s=90, what="the compressor's windows in the view")
        fleet = opener.open(base + "/", timeout=10).read().decode()
        assert "demo-gw" in fleet and "online" in fleet
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
    finally:
        stop_process(demo)
