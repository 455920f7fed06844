"""Independent Sparkplug B implementations for tests: Eclipse Tahu's `sparkplug-payload`
(node) and pysparkplug (PyPI), installed outside the repository into `~/.cache/edge-agent`.

Neither shares code with the agent, so a message both decode as the agent meant it is
Sparkplug and not merely what our own decoder accepts. pysparkplug needs paho-mqtt 1 (the
agent needs 2): it gets a venv of its own. `make sparkplug-decoders` installs both.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("EDGE_AGENT_CACHE", Path.home() / ".cache" / "edge-agent"))
TAHU = "sparkplug-payload@1.0.3"
PYSPARKPLUG = ("pysparkplug==0.6.1", "paho-mqtt==1.6.1", "protobuf==7.36.2")
NPM_DIR = CACHE / "npm"
VENV = CACHE / "pysparkplug-0.6.1"

_TAHU_SCRIPT = r"""
const spb = require("sparkplug-payload").get("spBv1.0");
const lines = require("fs").readFileSync(0, "utf8").split("\n").filter(Boolean);
const plain = (key, v) => (v && typeof v === "object" && "low" in v && "high" in v)
    ? v.toString() : v;
const out = [];
for (const line of lines) {
  const [b64, make] = JSON.parse(line);
  if (make) { out.push(Buffer.from(spb.encodePayload(make)).toString("base64")); continue; }
  out.push(spb.decodePayload(Buffer.from(b64, "base64")));
}
process.stdout.write(JSON.stringify(out, plain));
"""

_PYSPARKPLUG_SCRIPT = r"""
import base64, json, sys
import pysparkplug as spb
kinds = {"NBIRTH": spb.NBirth, "DBIRTH": spb.DBirth, "NDATA": spb.NData, "DDATA": spb.DData,
         "NDEATH": spb.NDeath, "DDEATH": spb.DDeath}
births, out = {}, []
for topic, b64 in json.load(sys.stdin):
    parts = topic.split("/")
    kind, device = parts[2], (parts[4] if len(parts) > 4 else None)
    raw = base64.b64decode(b64)
    birth = births.get(device)
    if kind in ("NDATA", "DDATA") and birth is not None:
        payload = kinds[kind].decode(raw, birth=birth)
    else:
        payload = kinds[kind].decode(raw)
    if kind == "NBIRTH":
        births = {None: payload}
    elif kind == "DBIRTH":
        births[device] = payload
    metrics = [payload.bd_seq_metric] if kind == "NDEATH" else list(getattr(payload, "metrics", ()))
    out.append({"seq": getattr(payload, "seq", None), "metrics": [
        {"name": m.name, "alias": m.alias, "value": m.value, "historical": m.is_historical}
        for m in metrics]})
json.dump(out, sys.stdout, default=str)
"""


def install() -> None:
    install_tahu()
    install_pysparkplug()


def install_tahu() -> Path:
    """`npm install --prefix ~/.cache/edge-agent/npm sparkplug-payload` unless it is there."""
    if not (NPM_DIR / "node_modules" / "sparkplug-payload" / "package.json").is_file():
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(NPM_DIR), TAHU, "--no-audit",
                        "--no-fund", "--silent"], check=True, timeout=300)
    return NPM_DIR


def install_pysparkplug() -> Path:
    """A venv with pysparkplug (and the paho-mqtt 1 it needs) unless it is there."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PYSPARKPLUG],
                       check=True, timeout=600)
    return python


def tahu_decode(payloads: Sequence[bytes]) -> list[dict[str, Any]]:
    """Each payload as Tahu's JavaScript decoder reads it (64-bit numbers as decimal strings)."""
    lines = [json.dumps([base64.b64encode(p).decode(), None]) for p in payloads]
    decoded: list[dict[str, Any]] = json.loads(_node("\n".join(lines)))
    return decoded


def tahu_encode(payload: dict[str, Any]) -> bytes:
    """A payload made by Tahu's encoder (e.g. an NCMD), from its JavaScript object form."""
    [b64] = json.loads(_node(json.dumps(["", payload])))
    return base64.b64decode(b64)


def _node(stdin: str) -> str:
    install_tahu()
    result = subprocess.run(["node", "-e", _TAHU_SCRIPT], input=stdin, capture_output=True,
                            text=True, check=True, timeout=60,
                            env={**os.environ, "NODE_PATH": str(NPM_DIR / "node_modules")})
    return result.stdout


def pysparkplug_decode(messages: Sequence[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """Each (topic, payload) in order as pysparkplug reads it, data resolved by the births."""
    python = install_pysparkplug()
    stdin = json.dumps([[t, base64.b64encode(p).decode()] for t, p in messages])
    result = subprocess.run([str(python), "-c", _PYSPARKPLUG_SCRIPT], input=stdin,
                            capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"pysparkplug could not decode: {result.stderr[-3000:]}")
    decoded: list[dict[str, Any]] = json.loads(result.stdout)
    return decoded
