"""End-to-end check behind scripts/serve.sh: a notebook kernel served by gateway-lite, used
through JupyterLab's Jupyter Server exactly as the browser uses it (REST session + kernel
WebSocket). Prints each step; exits non-zero on the first failure."""

import json
import os
import sys
import time
import urllib.request
import uuid

import websocket  # websocket-client

GW, LAB = sys.argv[1], sys.argv[2]
# Tokens come in the environment: a command line is readable by every local user.
TOKEN, GW_TOKEN = os.environ["LAB_TOKEN"], os.environ["GATEWAY_TOKEN"]


def call(base, method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method)
    if token:
        req.add_header("Authorization", f"token {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, data, timeout=60) as r:
        text = r.read()
        return r.status, (json.loads(text) if text else None)


def wait_up(base, path, token=None, what=""):
    deadline = time.monotonic() + 120
    while True:
        try:
            return call(base, "GET", path, token=token)
        except Exception as e:  # noqa: BLE001 - anything means "not up yet"
            if time.monotonic() > deadline:
                sys.exit(f"{what} did not come up: {e}")
            time.sleep(0.25)


def step(text):
    print(f"[check] {text}", flush=True)


class Kernel:
    def __init__(self, kernel_id):
        url = LAB.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {TOKEN}"], timeout=120)
        self.session = uuid.uuid4().hex

    def send(self, msg_type, content, channel="shell"):
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "session": self.session,
                       "username": "demo", "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": [],
        }))
        return msg_id

    def run(self, code):
        """Executes code; returns (text output, error name or None)."""
        msg_id = self.send("execute_request", {"code": code, "silent": False})
        out, error, replied, idle = [], None, False, False
        while not (replied and idle):
            m = json.loads(self.ws.recv())
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            t = m["msg_type"]
            if t == "stream":
                out.append(m["content"]["text"])
            elif t == "execute_result":
                out.append(m["content"]["data"].get("text/plain", ""))
            elif t == "error":
                error = m["content"]["ename"]
            elif t == "execute_reply":
                replied = True
            elif t == "status" and m["content"]["execution_state"] == "idle":
                idle = True
        return "".join(out).strip(), error


wait_up(GW, "/api", token=GW_TOKEN, what="gateway-lite")
_, specs = call(GW, "GET", "/api/kernelspecs", token=GW_TOKEN)
step(f"gateway-lite is up; kernelspecs {sorted(specs['kernelspecs'])}, default {specs['default']}")
wait_up(LAB, "/api/status", token=TOKEN, what="JupyterLab")
step("JupyterLab is up with --gateway-url at gateway-lite")
t0 = time.monotonic()
status, session = call(LAB, "POST", "/api/sessions", {"path": "demo.ipynb", "type": "notebook", "name": "demo.ipynb",
                                                     "kernel": {"name": "python3"}}, token=TOKEN)
kid = session["kernel"]["id"]
step(f"session created through Jupyter Server in {1000 * (time.monotonic() - t0):.0f} ms: kernel {kid}")
_, listed = call(GW, "GET", "/api/kernels", token=GW_TOKEN)
assert kid in [k["id"] for k in listed], f"kernel {kid} is not on gateway-lite: {listed}"
step("gateway-lite lists the kernel")
k = Kernel(kid)
text, err = k.run("1+1")
assert (text, err) == ("2", None), (text, err)
step("1+1 -> 2")
text, err = k.run("import os; print(open(f'/proc/{os.getppid()}/comm').read().strip())")
assert text == "kernel-launcher", text
step(f"the kernel's parent process is {text}")
sleep_id = k.send("execute_request", {"code": "import time; time.sleep(60)", "silent": False})
time.sleep(0.5)
call(LAB, "POST", f"/api/kernels/{kid}/interrupt", token=TOKEN)
while True:
    m = json.loads(k.ws.recv())
    if m.get("parent_header", {}).get("msg_id") == sleep_id and m["msg_type"] == "error":
        assert m["content"]["ename"] == "KeyboardInterrupt", m["content"]
        break
step("interrupt -> KeyboardInterrupt")
k.ws.close()
call(LAB, "DELETE", f"/api/sessions/{session['id']}", token=TOKEN)
deadline = time.monotonic() + 60
while kid in [x["id"] for x in call(GW, "GET", "/api/kernels", token=GW_TOKEN)[1]]:
    assert time.monotonic() < deadline, "kernel still listed after the session was deleted"
    time.sleep(0.2)
step("session deleted -> kernel gone from gateway-lite")
print("OK", flush=True)
