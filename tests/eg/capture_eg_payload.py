#!/usr/bin/env python3
"""Capture a real payload from Enterprise Gateway 3.3.0's own launch_ipykernel.py, for the
gateway-side decrypt test of our protocol crate.

It generates an RSA-1024 key pair the way EG does, listens on 127.0.0.1, runs the unmodified
launch_ipykernel.py from the EG sdist (venv-kernel's python, legacy --RemoteProcessProxy.*
options, port range 0..0), reads the payload until EOF, stops the launcher (comm-port
{"shutdown": 1}, then SIGTERM/SIGKILL to its process group) and writes JSON:

  {"private_key_pem": "-----BEGIN RSA PRIVATE KEY-----...", "public_key": "<base64 DER SPKI, as EG
   passes {public_key}>", "kernel_id": "<uuid>", "payload": "<the bytes received, as text>",
   "launcher": "<path>", "eg_version": "3.3.0"}

Usage:
  python3 tests/eg/capture_eg_payload.py OUT.json [--python PY] [--launcher PATH] [--timeout S]
Defaults come from $KL_CACHE/env.sh (scripts/setup-env.sh): KL_PY_KERNEL and
KL_EG_SDIST/etc/kernel-launchers/python/scripts/launch_ipykernel.py. The python running this
script needs pycryptodomex (venv-kernel and venv-eg have it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from Cryptodome.PublicKey import RSA


def _env_sh() -> dict[str, str]:
    cache = os.environ.get("KL_CACHE") or str(Path.home() / ".cache" / "kernel-launcher")
    out = {}
    f = Path(cache) / "env.sh"
    if f.is_file():
        for line in f.read_text().splitlines():
            if line.startswith("export "):
                k, _, v = line[7:].partition("=")
                out[k] = (shlex.split(v) or [""])[0]
    out.update({k: v for k, v in os.environ.items() if k.startswith("KL_")})
    return out


def capture(python: str, launcher: str, timeout: float) -> dict:
    key = RSA.generate(1024)
    pem_pub = key.publickey().export_key("PEM").decode()
    public_key = "".join(ln for ln in pem_pub.splitlines() if "-----" not in ln)
    kernel_id = str(uuid.uuid4())

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(timeout)
    port = srv.getsockname()[1]

    cmd = [
        python,
        launcher,
        "--RemoteProcessProxy.kernel-id",
        kernel_id,
        "--RemoteProcessProxy.response-address",
        f"127.0.0.1:{port}",
        "--RemoteProcessProxy.public-key",
        public_key,
        "--RemoteProcessProxy.port-range",
        "0..0",
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            raise RuntimeError(f"no payload within {timeout}s; launcher exit={proc.poll()}") from None
        chunks = []
        conn.settimeout(timeout)
        with conn:
            while True:
                b = conn.recv(4096)
                if not b:
                    break
                chunks.append(b)
        payload = b"".join(chunks).decode("utf-8")
    finally:
        srv.close()
        _stop(proc)
    return {
        "private_key_pem": key.export_key("PEM").decode(),
        "public_key": public_key,
        "kernel_id": kernel_id,
        "payload": payload,
        "launcher": launcher,
        "eg_version": "3.3.0",
    }


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    try:  # the launcher's forked listener may outlive it in its group
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def main(argv=None) -> int:
    env = _env_sh()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="JSON file to write")
    ap.add_argument("--python", default=env.get("KL_PY_KERNEL", "python3"))
    default_launcher = (
        str(Path(env["KL_EG_SDIST"]) / "etc/kernel-launchers/python/scripts/launch_ipykernel.py")
        if env.get("KL_EG_SDIST")
        else None
    )
    ap.add_argument("--launcher", default=default_launcher)
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args(argv)
    if not a.launcher or not Path(a.launcher).is_file():
        ap.error(f"launch_ipykernel.py not found ({a.launcher}); run scripts/setup-env.sh or pass --launcher")
    t0 = time.monotonic()
    result = capture(a.python, a.launcher, a.timeout)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}: payload {len(result['payload'])} bytes in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
