"""Helpers for the gateway-lite tests with real Jupyter peers (tests/gateway): they start
gateway-lite and Jupyter Server/Lab and reap what a test leaves behind; the fixtures are in
tests/gateway/conftest.py.

The pytest process runs in venv-lab ($KL_PY_LAB: Jupyter Server 2 + JupyterLab 4 + selenium,
see scripts/setup-env.sh). Every peer is a subprocess:
  * gateway-lite and kernel-launcher   target/debug (or $GATEWAY_LITE, $KERNEL_LAUNCHER)
  * ipykernel                          venv-kernel ($KL_PY_KERNEL)
  * IRkernel                           Debian's R ($KL_R)
  * EG 3.3.0's itests client           venv-eg ($KL_PY_EG) and the sdist ($KL_EG_SDIST)
  * Jupyter Server / JupyterLab        this venv
A missing peer FAILS the test with the fix; nothing is skipped.

Every process a test starts runs in its own session and carries KL_E2E_SERVER=<marker> in its
environment (inherited by launchers and kernels), so whatever survives a test is killed at
teardown, even after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from support import kernels
from support.kernels import free_port, kill_tree, wait_http_ok

REPO = Path(__file__).resolve().parents[2]
KL_ENV = kernels.load_kl_env()
START_WAIT = 90  # generous bound for a server to come up, only to avoid hangs

EG_PROXY = {
    "process_proxy": {
        "class_name": "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy"
    }
}


def require_exe(value: str | None, what: str, fix: str) -> str:
    if not value or not Path(value).is_file() or not os.access(value, os.X_OK):
        pytest.fail(f"{what} not found or not executable ({value!r}): {fix}", pytrace=False)
    return os.path.abspath(value)  # not resolve(): a venv python is a symlink to the base one


SETUP = "run scripts/setup-env.sh (it writes ~/.cache/kernel-launcher/env.sh)"


def tail_of(path: Path, n: int = 60) -> str:
    """The last `n` lines of a log file ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@dataclass(frozen=True)
class Peers:
    gateway: str
    launcher: str
    py_kernel: str
    this_venv_bin: Path

    @property
    def py_eg(self) -> str:
        return require_exe(KL_ENV.get("KL_PY_EG"), "KL_PY_EG (python with EG 3.3.0)", SETUP)

    @property
    def eg_sdist(self) -> Path:
        sdist = KL_ENV.get("KL_EG_SDIST") or ""
        if not (Path(sdist) / "enterprise_gateway" / "itests").is_dir():
            pytest.fail(f"EG 3.3.0 sdist with its itests not found ({sdist!r}): {SETUP}", pytrace=False)
        return Path(sdist)

    @property
    def r(self) -> str:
        return require_exe(KL_ENV.get("KL_R") or "/usr/bin/R", "R (Debian r-base-core)", SETUP)

    def ipykernel_argv(self) -> list[str]:
        return [self.py_kernel, "-m", "ipykernel_launcher", "-f", "{connection_file}"]

    def irkernel_argv(self) -> list[str]:
        return [self.r, "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"]


def isolated_env(tmp: Path, marker: str) -> dict[str, str]:
    """This process's environment without Jupyter/gateway settings, Jupyter dirs under tmp."""
    return kernels.isolated_env(tmp, marker)


def write_kernelspecs(root: Path, specs: dict[str, dict]) -> Path:
    """root/<name>/kernel.json for each spec; returns root (a --kernelspec-dir)."""
    for name, spec in specs.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "kernel.json").write_text(json.dumps({"display_name": name, "metadata": {}, **spec}, indent=2))
    return root


def reap(marker: str) -> list[int]:
    """SIGKILL every process still carrying KL_E2E_SERVER=marker; returns their pids."""
    pids = kernels.pids_with_env("KL_E2E_SERVER", marker)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return pids


@dataclass
class Gateway:
    url: str
    token: str | None
    proc: subprocess.Popen
    log_path: Path

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[-1]

    def get(self, path: str):
        headers = {"Authorization": f"token {self.token}"} if self.token else {}
        return requests.get(f"{self.url}{path}", headers=headers, timeout=30)

    def kernels(self) -> list[dict]:
        r = self.get("/api/kernels")
        assert r.status_code == 200, f"GET /api/kernels on gateway-lite: HTTP {r.status_code}: {r.text[:500]}"
        return r.json()

    def log_tail(self, n: int = 60) -> str:
        return tail_of(self.log_path, n)


@contextlib.contextmanager
def run_gateway(peers: Peers, tmp: Path, specs: dict[str, dict], default: str, token: str | None,
                args: tuple[str, ...] = ()):
    """gateway-lite on 127.0.0.1:<free port> serving `specs` (and nothing from the Jupyter paths).

    `token`: given to the gateway (through its environment, never its command line); None
    lets the gateway make one, read back from the URL it prints; "" runs it with --no-auth
    (loopback only), for clients that send no token. `args`: more options (TLS, --base-url);
    the gateway's URL is the one it prints (https://, with the base URL, for those)."""
    tmp.mkdir(parents=True, exist_ok=True)
    marker = f"gateway-lite-{uuid.uuid4().hex}"
    spec_dir = write_kernelspecs(tmp / "kernelspecs", specs)
    cmd = [peers.gateway, "--ip", "127.0.0.1", "--port", "0", "--kernelspec-dir", str(spec_dir),
           "--launcher", peers.launcher, "--default-kernel-name", default]
    if token == "":
        cmd += ["--no-auth"]
    cmd += list(args)
    log_path = tmp / "gateway-lite.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    env = isolated_env(tmp, marker)
    env["GATEWAY_LITE_LOG"] = os.environ.get("GATEWAY_LITE_LOG", "info")
    env.pop("GATEWAY_LITE_AUTH_TOKEN", None)
    if token:
        env["GATEWAY_LITE_AUTH_TOKEN"] = token
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env,
                            text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()  # "... listening on http[s]://127.0.0.1:PORT/[BASE/][?token=T]"
        if "listening on" not in line:
            pytest.fail(f"gateway-lite did not start: {line!r}\n{log_path.read_text()}", pytrace=False)
        url, _, query = line.split("listening on", 1)[1].strip().partition("/?")
        printed = query.removeprefix("token=") if query.startswith("token=") else None
        gw = Gateway(url.rstrip("/"), token or printed, proc, log_path)
        yield gw
    finally:
        kill_tree(proc, grace=20)  # SIGTERM: gateway-lite shuts its kernels down, then exits
        reap(marker)
        log.close()


@dataclass
class JupyterServer:
    base: str
    token: str
    proc: subprocess.Popen
    log_path: Path
    root_dir: Path

    def headers(self) -> dict:
        return {"Authorization": f"token {self.token}"}

    def log_tail(self, n: int = 60) -> str:
        return tail_of(self.log_path, n)


@contextlib.contextmanager
def run_jupyter(peers: Peers, tmp: Path, gw: Gateway, app: str = "jupyter-server", extra: list[str] = ()):
    """Jupyter Server 2 (app="jupyter-server") or JupyterLab 4 ("jupyter-lab") from this venv,
    with --gateway-url at gateway-lite."""
    tmp.mkdir(parents=True, exist_ok=True)
    exe = require_exe(str(peers.this_venv_bin / app), f"{app} next to this python",
                "run tests/gateway with $KL_PY_LAB (scripts/setup-env.sh makes venv-lab)")
    port = free_port()
    token = uuid.uuid4().hex
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    # `extra` may name the gateway its own way (--GatewayClient.url=...); traitlets takes one.
    url = [] if any(a.startswith("--GatewayClient.url=") for a in extra) else [f"--gateway-url={gw.url}"]
    cmd = [exe, *url, "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", "--ServerApp.allow_root=True",
           "--ServerApp.open_browser=False", f"--ServerApp.root_dir={root}",
           "--GatewayClient.request_timeout=120", *extra]
    if gw.token:
        cmd.append(f"--GatewayClient.auth_token={gw.token}")
    marker = f"jupyter-{uuid.uuid4().hex}"
    log_path = tmp / f"{app}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=isolated_env(tmp, marker), start_new_session=True, cwd=str(tmp))
    base = f"http://127.0.0.1:{port}"
    server = JupyterServer(base, token, proc, log_path, root)
    try:
        try:
            wait_http_ok(f"{base}/api/status", proc, timeout=START_WAIT, token=token)
        except Exception as exc:
            pytest.fail(f"{app} did not become ready: {exc}\n{server.log_tail()}", pytrace=False)
        yield server
    finally:
        kill_tree(proc, grace=20)
        reap(marker)
        log.close()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll predicate() until it returns a truthy value (returned); fail after timeout (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(interval)
