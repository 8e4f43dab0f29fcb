"""Jupyter Server 2 (--gateway-url) in front of gateway-lite, driven through Jupyter Server's
own REST API and WebSocket, as JupyterLab would drive it.

Real peers only: gateway-lite and kernel-launcher from target/debug (or $GATEWAY_LITE,
$KERNEL_LAUNCHER), ipykernel from $KL_PY_KERNEL, Jupyter Server from the venv running this
test ($KL_PY_GP). A missing peer fails the test with the fix; nothing is skipped.

Run:  source ~/.cache/kernel-launcher/env.sh && cargo build -p launcher -p gateway-lite &&
      $KL_PY_GP -m pytest -v tests/gateway/test_jupyter_server.py
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WAIT = 60.0  # generous bound, only to avoid hangs


def _env_sh(key: str) -> str | None:
    cache = os.environ.get("KL_CACHE") or str(Path.home() / ".cache" / "kernel-launcher")
    f = Path(cache) / "env.sh"
    if not f.is_file():
        return None
    for line in f.read_text().splitlines():
        line = line.strip()
        if line.startswith(f"export {key}="):
            parts = shlex.split(line.split("=", 1)[1])
            return parts[0] if parts else None
    return None


def _required_file(value: str | None, what: str, fix: str) -> str:
    if not value or not Path(value).is_file():
        pytest.fail(f"{what} not found ({value!r}): {fix}")
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"token {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def stack(tmp_path):
    gateway = _required_file(
        os.environ.get("GATEWAY_LITE") or str(REPO / "target/debug/gateway-lite"),
        "gateway-lite",
        "run `cargo build -p gateway-lite` or set GATEWAY_LITE",
    )
    launcher = _required_file(
        os.environ.get("KERNEL_LAUNCHER") or str(REPO / "target/debug/kernel-launcher"),
        "kernel-launcher",
        "run `cargo build -p launcher` or set KERNEL_LAUNCHER",
    )
    py_kernel = _required_file(
        os.environ.get("KL_PY_KERNEL") or _env_sh("KL_PY_KERNEL"),
        "KL_PY_KERNEL (python with ipykernel)",
        "run scripts/setup-env.sh and source ~/.cache/kernel-launcher/env.sh",
    )
    jupyter_server = Path(sys.executable).parent / "jupyter-server"
    _required_file(str(jupyter_server), "jupyter-server next to this python", "run this test with $KL_PY_GP")
    try:
        import websocket  # noqa: F401  (websocket-client, in venv-gp)
    except ImportError:
        pytest.fail("websocket-client is missing from this venv: run this test with $KL_PY_GP")

    spec_dir = tmp_path / "specs" / "py"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [py_kernel, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python (gateway-lite)",
                "language": "python",
            }
        )
    )
    gw_token = uuid.uuid4().hex
    env = dict(os.environ, JUPYTER_PATH="", JUPYTER_DATA_DIR=str(tmp_path / "data"))
    gw_log = open(tmp_path / "gateway.log", "w")
    gw = subprocess.Popen(
        [gateway, "--port", "0", "--kernelspec-dir", str(tmp_path / "specs"), "--launcher", launcher,
         "--auth-token", gw_token, "--default-kernel-name", "py"],
        stdout=subprocess.PIPE, stderr=gw_log, env=env, text=True,
    )
    line = gw.stdout.readline()
    if "listening on" not in line:
        stop(gw)
        pytest.fail(f"gateway-lite did not start: {line!r}\n{(tmp_path / 'gateway.log').read_text()}")
    gw_url = line.split("listening on", 1)[1].strip().rstrip("/")

    js_port = free_port()
    js_token = uuid.uuid4().hex
    (tmp_path / "root").mkdir()
    js_log = open(tmp_path / "server.log", "w")
    js = subprocess.Popen(
        [str(jupyter_server), f"--gateway-url={gw_url}", f"--GatewayClient.auth_token={gw_token}",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={js_port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={js_token}", "--ServerApp.allow_root=True",
         "--ServerApp.open_browser=False", f"--ServerApp.root_dir={tmp_path / 'root'}"],
        stdout=js_log, stderr=subprocess.STDOUT, env=env,
    )
    base = f"http://127.0.0.1:{js_port}"
    deadline = time.monotonic() + WAIT
    while True:
        try:
            status, _ = http("GET", f"{base}/api/status", js_token)
            if status == 200:
                break
        except OSError:
            pass
        if js.poll() is not None or time.monotonic() > deadline:
            stop(js)
            stop(gw)
            pytest.fail(f"jupyter server did not start:\n{(tmp_path / 'server.log').read_text()}")
        time.sleep(0.2)
    try:
        yield {"base": base, "token": js_token, "gw_url": gw_url, "gw_token": gw_token, "tmp": tmp_path}
    finally:
        stop(js)
        stop(gw)
        gw_log.close()
        js_log.close()


class Channels:
    def __init__(self, url: str, token: str):
        import websocket

        self.ws = websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=WAIT)
        self.session = uuid.uuid4().hex

    def send(self, code: str) -> str:
        mid = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": mid, "msg_type": "execute_request", "username": "t", "session": self.session,
                       "date": "", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        return mid

    def collect(self, mid: str, until_input: bool = False) -> dict:
        out = {"text": "", "ename": "", "status": ""}
        replied = idle = False
        deadline = time.monotonic() + WAIT
        while not (replied and idle):
            assert time.monotonic() < deadline, f"no reply to {mid} in time: {out}"
            m = json.loads(self.ws.recv())
            if m.get("parent_header", {}).get("msg_id") != mid:
                continue
            kind, content = m["msg_type"], m["content"]
            if until_input and kind == "execute_input":
                return out
            if m["channel"] == "shell" and kind == "execute_reply":
                replied, out["status"] = True, content["status"]
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_result":
                out["text"] += content["data"]["text/plain"]
            elif kind == "stream":
                out["text"] += content["text"]
            elif kind == "error":
                out["ename"] = content["ename"]
        return out

    def execute(self, code: str) -> dict:
        return self.collect(self.send(code))

    def close(self) -> None:
        self.ws.close()


def test_session_execute_interrupt_restart_shutdown(stack):
    base, token = stack["base"], stack["token"]
    status, session = http("POST", f"{base}/api/sessions", token,
                           {"path": "t.ipynb", "name": "t.ipynb", "type": "notebook", "kernel": {"name": "py"}})
    assert status == 201, session
    kid = session["kernel"]["id"]

    # The kernel lives in gateway-lite.
    status, remote = http("GET", f"{stack['gw_url']}/api/kernels/{kid}", stack["gw_token"])
    assert status == 200 and remote["id"] == kid, remote

    ws_url = base.replace("http", "ws", 1) + f"/api/kernels/{kid}/channels?session_id={uuid.uuid4().hex}"
    ch = Channels(ws_url, token)
    try:
        out = ch.execute("1+1")
        assert (out["text"], out["status"]) == ("2", "ok"), out
        assert ch.execute("x = 7; x")["text"] == "7"

        mid = ch.send("import time; time.sleep(60)")
        ch.collect(mid, until_input=True)
        time.sleep(0.3)
        status, body = http("POST", f"{base}/api/kernels/{kid}/interrupt", token)
        assert status == 204, body
        assert ch.collect(mid)["ename"] == "KeyboardInterrupt"
    finally:
        ch.close()

    status, model = http("POST", f"{base}/api/kernels/{kid}/restart", token)
    assert status == 200, model
    assert model["id"] == kid

    ch = Channels(ws_url, token)
    try:
        out = ch.execute("x")
        assert out["ename"] == "NameError", out
        assert ch.execute("6*7")["text"] == "42"
    finally:
        ch.close()

    status, body = http("DELETE", f"{base}/api/sessions/{session['id']}", token)
    assert status == 204, body
    deadline = time.monotonic() + WAIT
    while True:
        status, kernels = http("GET", f"{stack['gw_url']}/api/kernels", stack["gw_token"])
        if status == 200 and not any(k["id"] == kid for k in kernels):
            break
        assert time.monotonic() < deadline, f"kernel {kid} still in gateway-lite: {kernels}"
        time.sleep(0.2)
