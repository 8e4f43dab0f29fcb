"""Jupyter Server 2 (--gateway-url) in front of gateway-lite, driven through Jupyter Server's
own REST API and WebSocket, as JupyterLab would drive it: create a session, run cells,
interrupt, restart, shut down (DELETE the session), each checked on gateway-lite's side too;
and the same over mutual TLS, with gateway-lite under a base URL.

Real peers only: gateway-lite and kernel-launcher from target/debug (or $GATEWAY_LITE,
$KERNEL_LAUNCHER), ipykernel from $KL_PY_KERNEL, Jupyter Server from the venv running this
test ($KL_PY_LAB). A missing peer fails the test with the fix; nothing is skipped.

Run:  source ~/.cache/kernel-launcher/env.sh && cargo build -p launcher -p gateway-lite &&
      $KL_PY_LAB -m pytest -v tests/gateway/test_jupyter_server.py
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
import requests

from support.gateway import run_gateway, run_jupyter

WAIT = 60.0  # generous bound, only to avoid hangs


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


@pytest.fixture
def stack(peers, tmp_path):
    specs = {"py": {"argv": peers.ipykernel_argv(), "display_name": "Python (gateway-lite)", "language": "python"}}
    gw_token = uuid.uuid4().hex
    with run_gateway(peers, tmp_path / "gw", specs, "py", gw_token) as gw, \
            run_jupyter(peers, tmp_path / "js", gw, app="jupyter-server") as js:
        yield {"base": js.base, "token": js.token, "gw_url": gw.url, "gw_token": gw_token, "tmp": tmp_path}


class Channels:
    def __init__(self, url: str, token: str):
        import websocket

        self.ws = websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=WAIT)
        self.session = uuid.uuid4().hex
        self.states: list[str] = []  # every iopub execution_state seen, whoever caused it

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

    def collect(self, mid: str, until_text: str | None = None) -> dict:
        out = {"text": "", "ename": "", "status": ""}
        replied = idle = False
        deadline = time.monotonic() + WAIT
        while not (replied and idle):
            assert time.monotonic() < deadline, f"no reply to {mid} in time: {out}"
            m = json.loads(self.ws.recv())
            if m["msg_type"] == "status":
                self.states.append(m["content"]["execution_state"])
            if m.get("parent_header", {}).get("msg_id") != mid:
                continue
            kind, content = m["msg_type"], m["content"]
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
            if until_text is not None and until_text in out["text"]:
                return out
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

        mid = ch.send("import time; print('sleeping', flush=True); time.sleep(60)")
        assert "sleeping" in ch.collect(mid, until_text="sleeping")["text"]
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


def test_requested_restart_is_not_announced_as_a_crash(stack):
    """A restart asked for through Jupyter Server's REST API: the WebSocket open across it sees
    the new kernel's own status messages (starting/busy/idle), never 'restarting'."""
    base, token = stack["base"], stack["token"]
    status, model = http("POST", f"{base}/api/kernels", token, {"name": "py"})
    assert status == 201, model
    kid = model["id"]
    ch = Channels(base.replace("http", "ws", 1) + f"/api/kernels/{kid}/channels?session_id={uuid.uuid4().hex}", token)
    try:
        assert ch.execute("1+1")["text"] == "2"
        status, body = http("POST", f"{base}/api/kernels/{kid}/restart", token)
        assert status == 200, body
        # The same WebSocket reaches the restarted kernel; everything it carried meanwhile is
        # read (and its states recorded) before this reply.
        deadline = time.monotonic() + WAIT
        while True:
            out = ch.execute("'after restart'")
            if "after restart" in out["text"]:
                break
            assert time.monotonic() < deadline, f"restarted kernel never answered on the open WebSocket: {out}"
        assert "restarting" not in ch.states, f"iopub states across a requested restart: {ch.states}"
    finally:
        ch.close()
        http("DELETE", f"{base}/api/kernels/{kid}", token)


def make_pki(d) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate it signs,
    made with the openssl CLI into `d` (no key is ever committed); the paths by name."""
    d.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=gateway-lite test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")]:
        (d / f"{name}.ext").write_text(
            f"{ext}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
        openssl("req", *ec, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {n: str(d / f"{n}.pem") for n in ["ca", "server", "server-key", "client", "client-key"]}


def test_through_jupyter_server_over_mutual_tls_under_a_base_url(peers, tmp_path):
    """gateway-lite with TLS, a client CA and --base-url /gw/; Jupyter Server 2 as its gateway
    client over https (GatewayClient.url, ca_certs, client_cert/client_key, auth_token): a
    session's kernel starts and runs cells over the WebSocket Jupyter Server opens to it.

    The client certificate is also what makes Jupyter Server use ca_certs at all: its
    GatewayClient (2.21.1) passes ca_certs to its HTTP client only with a client_cert."""
    pki = make_pki(tmp_path / "pki")
    specs = {"py": {"argv": peers.ipykernel_argv(), "display_name": "Python (gateway-lite)", "language": "python"}}
    gw_token = uuid.uuid4().hex
    tls = ("--certfile", pki["server"], "--keyfile", pki["server-key"], "--client-ca", pki["ca"],
           "--base-url", "/gw/")
    with run_gateway(peers, tmp_path / "gw", specs, "py", gw_token, args=tls) as gw:
        assert gw.url.startswith("https://127.0.0.1:") and gw.url.endswith("/gw"), gw.url

        def direct(url: str) -> requests.Response:
            # verify per request: a Session's is overridden by REQUESTS_CA_BUNDLE.
            return requests.get(url, verify=pki["ca"], cert=(pki["client"], pki["client-key"]),
                                headers={"Authorization": f"token {gw_token}"}, timeout=WAIT)

        assert direct(f"{gw.url}/api").status_code == 200
        assert direct(f"{gw.url.removesuffix('/gw')}/api").status_code == 404
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(f"{gw.url}/api", verify=pki["ca"], timeout=WAIT)  # no client certificate
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(gw.url.replace("https://", "http://", 1) + "/api", timeout=WAIT)  # plain HTTP

        client = [f"--GatewayClient.url={gw.url}/", f"--GatewayClient.ca_certs={pki['ca']}",
                  f"--GatewayClient.client_cert={pki['client']}", f"--GatewayClient.client_key={pki['client-key']}"]
        # (run_jupyter adds --GatewayClient.auth_token=<the gateway's token>.)
        with run_jupyter(peers, tmp_path / "js", gw, app="jupyter-server", extra=client) as js:
            base, token = js.base, js.token
            status, specs_seen = http("GET", f"{base}/api/kernelspecs", token)
            assert status == 200 and "py" in specs_seen["kernelspecs"], specs_seen
            status, session = http("POST", f"{base}/api/sessions", token,
                                   {"path": "t.ipynb", "name": "t.ipynb", "type": "notebook",
                                    "kernel": {"name": "py"}})
            assert status == 201, f"{session}\n{js.log_tail()}\n{gw.log_tail()}"
            kid = session["kernel"]["id"]
            remote = direct(f"{gw.url}/api/kernels/{kid}")
            assert remote.status_code == 200 and remote.json()["id"] == kid, remote.text

            ws_url = base.replace("http", "ws", 1) + f"/api/kernels/{kid}/channels?session_id={uuid.uuid4().hex}"
            ch = Channels(ws_url, token)
            try:
                out = ch.execute("1+1")
                assert (out["text"], out["status"]) == ("2", "ok"), f"{out}\n{js.log_tail()}"
                assert ch.execute("print('over tls')")["text"] == "over tls\n"
            finally:
                ch.close()

            status, body = http("DELETE", f"{base}/api/sessions/{session['id']}", token)
            assert status == 204, body
            deadline = time.monotonic() + WAIT
            while any(k["id"] == kid for k in direct(f"{gw.url}/api/kernels").json()):
                assert time.monotonic() < deadline, f"kernel {kid} still in gateway-lite"
                time.sleep(0.2)
