"""Helpers every real-peer suite and script needs, so each exists once: ports, processes
(/proc, no psutil), a small Jupyter REST + WebSocket client (requests + websocket-client), the
kernel lifecycle scenario shared by the EG and gateway_provisioners tests, and the runner of
EG's own itests (shared by tests/eg and tests/gateway). Also used by tests/spark,
bench/eg_bench.py, bench/gateway_bench.py and scripts/demo.py."""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests
import websocket

# Generous limits, only to avoid hangs; nothing asserts speed.
START_TIMEOUT = 120
EXEC_TIMEOUT = 60
GONE_TIMEOUT = 30


# ----------------------------------------------------------------------------- environment


def load_kl_env() -> dict[str, str]:
    """$KL_CACHE/env.sh (written by scripts/setup-env.sh) as a dict; environment variables of
    the same name win."""
    cache = os.environ.get("KL_CACHE") or str(Path.home() / ".cache" / "kernel-launcher")
    values: dict[str, str] = {"KL_CACHE": cache}
    env_file = Path(cache) / "env.sh"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            line = line.strip()
            if not line.startswith("export "):
                continue
            key, _, raw = line[len("export ") :].partition("=")
            parts = shlex.split(raw)
            values[key] = parts[0] if parts else ""
    for key in list(values) + [
        "KL_PY_KERNEL",
        "KL_PY_EG",
        "KL_PY_GP",
        "KL_PY_LAB",
        "KL_PY_PM",
        "KL_EG_SDIST",
        "KL_JUPYTER_PATH",
        "KL_R",
    ]:
        if os.environ.get(key):
            values[key] = os.environ[key]
    return values


# Launcher options of EG 3.3.0's own kernelspecs (RemoteProcessProxy.*), and the plain spelling.
EG_LEGACY_OPTS = [
    "--RemoteProcessProxy.kernel-id",
    "{kernel_id}",
    "--RemoteProcessProxy.response-address",
    "{response_address}",
    "--RemoteProcessProxy.public-key",
    "{public_key}",
    "--RemoteProcessProxy.port-range",
    "{port_range}",
]
PLAIN_OPTS = [
    "--kernel-id",
    "{kernel_id}",
    "--response-address",
    "{response_address}",
    "--public-key",
    "{public_key}",
    "--port-range",
    "{port_range}",
]


# ----------------------------------------------------------------------------- ports / http


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, proc: subprocess.Popen, timeout: float, token: str | None = None) -> None:
    headers = {"Authorization": f"token {token}"} if token else {}
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            r = requests.get(url, headers=headers, timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last})")


# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Proc:
    pid: int
    starttime: int  # /proc/<pid>/stat field 22: identifies the process across pid reuse
    cmdline: str

    def alive(self) -> bool:
        st = _stat(self.pid)
        return st is not None and st[1] != "Z" and st[2] == self.starttime


def _stat(pid: int):
    """(ppid, state, starttime) or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    # rest[0] = state (field 3), rest[1] = ppid (field 4), rest[19] = starttime (field 22)
    return int(rest[1]), rest[0], int(rest[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k] = v
    return out


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def proc_of(pid: int) -> Proc | None:
    st = _stat(pid)
    if st is None or st[1] == "Z":
        return None
    return Proc(pid, st[2], _cmdline(pid))


def exe_of(pid: int) -> str:
    try:
        return os.path.realpath(f"/proc/{pid}/exe")
    except OSError:
        return ""


def pids_with_env(key: str, value: str) -> list[int]:
    k, v = key.encode(), value.encode()
    me = os.getpid()
    return [pid for pid in _all_pids() if pid != me and _environ(pid).get(k) == v]


def kernel_processes(kernel_id: str) -> set[Proc]:
    """Every live process belonging to a kernel: those whose environment carries
    KERNEL_ID=<id> (the gateway sets it on the launcher; children inherit it) or whose command
    line names the id, plus all their descendants."""
    roots = set(pids_with_env("KERNEL_ID", kernel_id))
    me = os.getpid()
    for pid in _all_pids():
        if pid != me and kernel_id in _cmdline(pid) and "pytest" not in _cmdline(pid):
            roots.add(pid)
    return descendants(roots, include_roots=True)


def descendants(roots, include_roots: bool = False) -> set[Proc]:
    """Live descendants of `roots` (and the roots themselves with include_roots)."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st:
            children.setdefault(st[0], []).append(pid)
    result: set[Proc] = set()
    stack = list(roots) if include_roots else [c for r in roots for c in children.get(r, [])]
    while stack:
        pid = stack.pop()
        p = proc_of(pid)
        if p is None or p in result:
            continue
        result.add(p)
        stack.extend(children.get(pid, []))
    return result


def wait_gone(procs, timeout: float = GONE_TIMEOUT) -> set[Proc]:
    """Wait until none of `procs` is alive; return the survivors (empty set = all gone)."""
    deadline = time.monotonic() + timeout
    alive = {p for p in procs if p.alive()}
    while alive and time.monotonic() < deadline:
        time.sleep(0.25)
        alive = {p for p in alive if p.alive()}
    return alive


def describe(procs) -> str:
    return "; ".join(f"pid {p.pid}: {p.cmdline[:200]}" for p in sorted(procs, key=lambda p: p.pid)) or "(none)"


def kill_tree(proc: subprocess.Popen, grace: float = 10) -> None:
    """Stop a process we started with start_new_session=True, and its whole group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except OSError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


# ----------------------------------------------------------------------------- client


class JupyterRest:
    """REST side of the Jupyter kernels API (EG 3.3.0 and Jupyter Server 2 speak the same)."""

    def __init__(self, base_url: str, token: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.headers = {"Authorization": f"token {token}"} if token else {}

    def start_kernel(self, name: str, env: dict | None = None):
        body: dict = {"name": name}
        if env is not None:
            body["env"] = env
        return requests.post(f"{self.base_url}/api/kernels", json=body, headers=self.headers, timeout=START_TIMEOUT)

    def get_kernel(self, kid: str):
        return requests.get(f"{self.base_url}/api/kernels/{kid}", headers=self.headers, timeout=30)

    def interrupt(self, kid: str):
        return requests.post(f"{self.base_url}/api/kernels/{kid}/interrupt", headers=self.headers, timeout=60)

    def restart(self, kid: str):
        return requests.post(f"{self.base_url}/api/kernels/{kid}/restart", headers=self.headers, timeout=START_TIMEOUT)

    def delete(self, kid: str):
        return requests.delete(f"{self.base_url}/api/kernels/{kid}", headers=self.headers, timeout=START_TIMEOUT)

    def channels(self, kid: str) -> KernelChannels:
        url = self.base_url.replace("http://", "ws://", 1) + f"/api/kernels/{kid}/channels"
        return KernelChannels(url, self.headers)


@dataclass
class ExecResult:
    status: str | None = None  # execute_reply content.status
    text: str = ""  # stream + execute_result/display_data text/plain + error tracebacks
    ename: str | None = None
    evalue: str | None = None
    outputs: list = field(default_factory=list)


class KernelChannels:
    """Legacy (JSON text frame) kernel WebSocket protocol, as EG's and Jupyter Server's
    gateway clients use it."""

    def __init__(self, url: str, headers: dict):
        self.session = uuid.uuid4().hex
        hdrs = [f"{k}: {v}" for k, v in headers.items()]
        self.ws = websocket.create_connection(f"{url}?session_id={self.session}", header=hdrs, timeout=EXEC_TIMEOUT)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass

    def _msg(self, msg_type: str, content: dict, channel: str = "shell") -> dict:
        return {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": msg_type,
                "username": "kl-e2e",
                "session": self.session,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        }

    def send(self, msg: dict) -> str:
        self.ws.send(json.dumps(msg))
        return msg["header"]["msg_id"]

    def recv(self, deadline: float) -> dict | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.ws.settimeout(remaining)
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        if isinstance(raw, bytes):  # binary frame (buffers); not used by these tests
            return {"msg_type": "_binary", "parent_header": {}, "content": {}}
        return json.loads(raw)

    def kernel_info(self, timeout: float = EXEC_TIMEOUT) -> dict:
        """Send kernel_info_request until a reply arrives (the first may be lost while the
        kernel is still starting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mid = self.send(self._msg("kernel_info_request", {}))
            step = min(deadline, time.monotonic() + 5)
            while True:
                m = self.recv(step)
                if m is None:
                    break
                if m.get("msg_type") == "kernel_info_reply" and m.get("parent_header", {}).get("msg_id") == mid:
                    return m["content"]
        raise TimeoutError(f"no kernel_info_reply within {timeout}s")

    def submit(self, code: str) -> str:
        return self.send(
            self._msg(
                "execute_request",
                {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": False,
                },
            )
        )

    def collect(self, mid: str, timeout: float = EXEC_TIMEOUT, until_text: str | None = None) -> ExecResult:
        """Collect the outputs of request `mid` until its execute_reply and the iopub idle status
        have both arrived (or, with until_text, until that text shows up in the output)."""
        res = ExecResult()
        deadline = time.monotonic() + timeout
        got_reply = got_idle = False
        while not (got_reply and got_idle):
            m = self.recv(deadline)
            if m is None:
                raise TimeoutError(
                    f"execute {mid}: no {'reply' if not got_reply else 'idle'} within {timeout}s; got so far: {res}"
                )
            if m.get("parent_header", {}).get("msg_id") != mid:
                continue
            mt, c = m.get("msg_type"), m.get("content", {})
            if mt == "stream":
                res.text += c.get("text", "")
            elif mt in ("execute_result", "display_data"):
                res.text += c.get("data", {}).get("text/plain", "")
            elif mt == "error":
                res.ename, res.evalue = c.get("ename"), c.get("evalue")
                res.text += "\n".join(c.get("traceback", []))
            elif mt == "execute_reply":
                got_reply = True
                res.status = c.get("status")
                if c.get("status") == "error":
                    res.ename = res.ename or c.get("ename")
                    res.evalue = res.evalue or c.get("evalue")
            elif mt == "status" and c.get("execution_state") == "idle":
                got_idle = True
            res.outputs.append(m)
            if until_text is not None and until_text in res.text:
                return res
        return res

    def execute(self, code: str, timeout: float = EXEC_TIMEOUT) -> ExecResult:
        return self.collect(self.submit(code), timeout)


# ----------------------------------------------------------------------------- scenario

LANG = {
    "python": {
        "two": ("1+1", "2"),
        "define": "x = 123",
        "show_x": "print(x)",
        "sleep": "print('begin', flush=True)\nimport time\ntime.sleep(600)\nprint('end')",
        "interrupted": lambda r: r.ename == "KeyboardInterrupt" or "KeyboardInterrupt" in r.text,
        "undefined": lambda r: r.ename == "NameError" or "NameError" in r.text,
    },
    "r": {
        "two": ("1+1", "2"),
        "define": "x <- 123",
        "show_x": "cat(x, '\\n')",
        "sleep": "cat('begin\\n'); flush(stdout()); Sys.sleep(600); cat('end\\n')",
        # IRkernel stops the cell on SIGINT and reports no error (EG's own R itest expects that).
        "interrupted": lambda r: "end" not in r.text,
        "undefined": lambda r: r.status == "error" and "not found" in ((r.evalue or "") + r.text),
    },
}


def run_lifecycle(server, spec, failure_context, check_reported_pid: bool) -> None:
    """start -> 1+1 -> interrupt -> restart -> DELETE -> no leftover processes."""
    rest = server.rest()
    lang = LANG[spec.language]
    env = {"KERNEL_USERNAME": "kl-e2e", "KERNEL_LAUNCH_TIMEOUT": "90"} if server.kind == "eg" else None
    r = rest.start_kernel(spec.name, env)
    assert r.status_code == 201, f"POST /api/kernels {spec.name}: HTTP {r.status_code}: {r.text[:2000]}"
    kid = r.json()["id"]
    failure_context.append((server, kid))
    seen: set[Proc] = set()
    deleted = False
    try:
        procs = kernel_processes(kid)
        assert procs, f"no process found for kernel {kid} after start"
        seen |= procs

        if check_reported_pid and server.kind == "eg":
            reported = server.reported_pids(kid)
            assert reported, f"EG logged no connection info with a pid for {kid}"
            pid = reported[-1]["pid"]
            assert pid in {p.pid for p in procs}, (
                f"reported pid {pid} is not a process of this kernel ({describe(procs)}); {reported[-1]['line']}"
            )
            if spec.ours:
                kp = proc_of(pid)
                launcher_exe = os.path.realpath(spec.argv[0])
                assert kp is not None and exe_of(pid) != launcher_exe, (
                    f"reported pid {pid} should be the kernel, not the launcher ({launcher_exe}): {kp}"
                )

        ch = rest.channels(kid)
        try:
            ch.kernel_info()
            code, want = lang["two"]
            res = ch.execute(code)
            assert res.status == "ok" and want in res.text, f"{code!r} -> {res}"

            res = ch.execute(lang["define"])
            assert res.status == "ok", f"define x -> {res}"

            # interrupt a long sleep once it is visibly running
            mid = ch.submit(lang["sleep"])
            partial = ch.collect(mid, until_text="begin")
            assert "begin" in partial.text, partial
            ri = rest.interrupt(kid)
            assert ri.status_code == 204, f"interrupt: HTTP {ri.status_code}: {ri.text[:1000]}"
            res = ch.collect(mid, timeout=EXEC_TIMEOUT)
            res.text = partial.text + res.text
            assert lang["interrupted"](res), f"interrupt did not stop the cell: {res}"
            # the kernel survived the interrupt: x is still defined
            res = ch.execute(lang["show_x"])
            assert res.status == "ok" and "123" in res.text, f"after interrupt, x -> {res}"
        finally:
            ch.close()

        before_restart = kernel_processes(kid)
        seen |= before_restart
        rr = rest.restart(kid)
        assert rr.status_code == 200, f"restart: HTTP {rr.status_code}: {rr.text[:2000]}"
        survivors = wait_gone(before_restart)
        assert not survivors, f"processes of the pre-restart kernel still alive after restart: {describe(survivors)}"
        after_restart = kernel_processes(kid)
        assert after_restart, "no process for the kernel after restart"
        seen |= after_restart

        ch = rest.channels(kid)
        try:
            ch.kernel_info()
            res = ch.execute(lang["show_x"])
            assert lang["undefined"](res), f"after restart x should be undefined: {res}"
            code, want = lang["two"]
            res = ch.execute(code)
            assert res.status == "ok" and want in res.text, f"after restart {code!r} -> {res}"
        finally:
            ch.close()

        seen |= kernel_processes(kid)
        rd = rest.delete(kid)
        deleted = True
        assert rd.status_code == 204, f"DELETE: HTTP {rd.status_code}: {rd.text[:2000]}"
        survivors = wait_gone(seen)
        assert not survivors, f"processes left after DELETE: {describe(survivors)}"
        late = kernel_processes(kid)
        assert not late, f"processes of kernel {kid} found after DELETE: {describe(late)}"
    finally:
        if not deleted:
            try:
                rest.delete(kid)
            except Exception:
                pass
        for p in seen | kernel_processes(kid):
            if p.alive():
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except OSError:
                    pass


# ----------------------------------------------------------------------------- EG's own itests

ITEST_CLASSES = {
    # file -> (pytest -k selector, number of tests it selects)
    "python": ("test_python_kernel.py", "TestPythonKernelLocal or TestPythonKernelDistributed", 10),
    "r": ("test_r_kernel.py", "TestRKernelLocal", 4),
}


def run_eg_itests(
    py_eg: str, sdist: Path, gateway_host: str, test_file: str, selector: str, env_names: dict, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run enterprise_gateway/itests/<test_file> from the EG 3.3.0 sdist (with venv-eg's python)
    against the gateway at gateway_host ("127.0.0.1:port").

    The itests' GatewayClient reads GATEWAY_HOST (default localhost:8888), KERNEL_USERNAME,
    KERNEL_LAUNCH_TIMEOUT and REQUEST_TIMEOUT at import time; test_base.py builds its hostname
    regex from ITEST_HOSTNAME_PREFIX + "*" (an empty prefix gives the invalid regex "*")."""
    sdist = Path(sdist)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(sdist.parent),
        "GATEWAY_HOST": gateway_host,
        "KERNEL_USERNAME": "kl-e2e",
        "KERNEL_LAUNCH_TIMEOUT": "90",
        "REQUEST_TIMEOUT": "30",  # per-message wait of the itests client; generous for these cells
        "ITEST_HOSTNAME_PREFIX": socket.gethostname(),
        "LOG_LEVEL": "INFO",
        **env_names,
    }
    cmd = [
        py_eg,
        "-m",
        "pytest",
        f"enterprise_gateway/itests/{test_file}",
        "-k",
        selector,
        "-v",
        "--maxfail=2",  # a broken kernel costs REQUEST_TIMEOUT per cell; two failures say enough
        "-p",
        "no:cacheprovider",
        "-c",
        "/dev/null",  # not the sdist's pyproject (its filterwarnings=error targets EG's unit tests)
        "--rootdir",
        str(sdist),
    ]
    return subprocess.run(cmd, cwd=sdist, env=env, capture_output=True, text=True, timeout=timeout)


def check_itests(proc: subprocess.CompletedProcess, expected_passed: int, what: str = "EG itests") -> None:
    out = proc.stdout + proc.stderr
    m = re.search(r"(\d+) passed", out)
    passed = int(m.group(1)) if m else 0
    assert proc.returncode == 0 and passed == expected_passed and " failed" not in out, (
        f"{what}: exit {proc.returncode}, {passed} passed (expected {expected_passed})\n{out[-12000:]}"
    )


def isolated_env(directory, marker: str, jupyter_path=()) -> dict:
    """This process's environment without Jupyter, gateway or kernel settings, with every
    Jupyter directory under `directory`, `jupyter_path` as JUPYTER_PATH, and `marker` in
    KL_E2E_SERVER so whatever the server starts can be found and killed (pids_with_env)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTER", "EG_", "GP_", "GATEWAY_LITE", "KERNEL_", "PYTEST", "VIRTUAL_ENV"))
    }
    d = Path(directory)
    env.update(
        {
            "JUPYTER_PATH": os.pathsep.join(str(p) for p in jupyter_path),
            "JUPYTER_CONFIG_DIR": str(d / "config"),
            "JUPYTER_DATA_DIR": str(d / "data"),
            "JUPYTER_RUNTIME_DIR": str(d / "runtime"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "IPYTHONDIR": str(d / "ipython"),
            "KL_E2E_SERVER": marker,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
