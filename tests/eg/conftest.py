"""Fixtures for the real-peer end-to-end tests.

The pytest process runs in venv-eg (see scripts/setup-env.sh). Everything else runs as a
subprocess from its own venv:
  * Jupyter Enterprise Gateway 3.3.0            -> venv-eg
  * Jupyter Server 2 + gateway_provisioners 0.5 -> venv-gp
  * ipykernel / EG's launch_ipykernel.py        -> venv-kernel
  * IRkernel                                    -> Debian's R

Paths come from $KL_CACHE/env.sh (written by scripts/setup-env.sh); environment variables of
the same name win. The launcher under test comes from $KERNEL_LAUNCHER; tests that need it
FAIL (never skip) when it is unset or missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.kernels import (
    EG_LEGACY_OPTS,
    PLAIN_OPTS,
    JupyterRest,
    free_port,
    isolated_env,
    kill_tree,
    load_kl_env,
    pids_with_env,
    wait_http_ok,
)

# ----------------------------------------------------------------------------- environment


KL_ENV = load_kl_env()


def _need(key: str) -> str:
    value = KL_ENV.get(key)
    if not value:
        pytest.fail(
            f"{key} is not known: run scripts/setup-env.sh first (it writes $KL_CACHE/env.sh)",
            pytrace=False,
        )
    return value


@dataclass
class Paths:
    py_kernel: str
    py_eg: str
    py_gp: str
    # ipykernel 7.4 (CurveZMQ capable), for the transport-encryption tests.
    py_lab: str
    eg_sdist: Path
    ir_jupyter_path: Path
    r: str

    @property
    def eg_launch_ipykernel(self) -> Path:
        return self.eg_sdist / "etc/kernel-launchers/python/scripts/launch_ipykernel.py"


@pytest.fixture(scope="session")
def paths() -> Paths:
    p = Paths(
        py_kernel=_need("KL_PY_KERNEL"),
        py_eg=_need("KL_PY_EG"),
        py_gp=_need("KL_PY_GP"),
        py_lab=_need("KL_PY_LAB"),
        eg_sdist=Path(_need("KL_EG_SDIST")),
        ir_jupyter_path=Path(_need("KL_JUPYTER_PATH")),
        r=KL_ENV.get("KL_R") or "/usr/bin/R",
    )
    for exe in (p.py_kernel, p.py_eg, p.py_gp, p.py_lab, p.r):
        if not os.access(exe, os.X_OK):
            pytest.fail(f"{exe} is not executable: run scripts/setup-env.sh", pytrace=False)
    if not p.eg_launch_ipykernel.is_file():
        pytest.fail(f"{p.eg_launch_ipykernel} missing: run scripts/setup-env.sh", pytrace=False)
    return p


def launcher_path_or_placeholder() -> str:
    value = os.environ.get("KERNEL_LAUNCHER", "")
    return str(Path(value).resolve()) if value else "/KERNEL_LAUNCHER-is-unset/kernel-launcher"




# ----------------------------------------------------------------------------- kernelspecs


@dataclass
class Spec:
    name: str
    language: str  # "python" or "r"
    ours: bool  # launched through KERNEL_LAUNCHER
    argv: list[str]
    metadata: dict
    env: dict = field(default_factory=dict)


EG_PROXY = {
    "process_proxy": {
        "class_name": "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy"
    }
}
GP_PROVISIONER = {
    "kernel_provisioner": {"provisioner_name": "distributed-provisioner", "config": {}}
}

# What gateway_provisioners 0.5.0's own kernelspecs pass (kernel-specs/ssh_python/kernel.json).
GP_OPTS = [
    "--kernel-id",
    "{kernel_id}",
    "--port-range",
    "{port_range}",
    "--response-address",
    "{response_address}",
    "--public-key",
    "{public_key}",
    "--transport-encryption",
    "{transport_encryption}",
    "--kernel-class-name",
    "ipykernel.ipkernel.IPythonKernel",
]


def build_specs(p: Paths) -> dict[str, Spec]:
    kl = launcher_path_or_placeholder()
    ipy = [p.py_kernel, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    ir = [p.r, "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"]
    specs = [
        # EG 3.3.0 + DistributedProcessProxy
        Spec("kl_py_legacy", "python", True, [kl, *EG_LEGACY_OPTS, "--", *ipy], EG_PROXY),
        Spec("kl_py_plain", "python", True, [kl, *PLAIN_OPTS, "--", *ipy], EG_PROXY),
        Spec(
            "eg_py_own",
            "python",
            False,
            [p.py_kernel, str(p.eg_launch_ipykernel), *EG_LEGACY_OPTS],
            EG_PROXY,
        ),
        Spec("kl_ir", "r", True, [kl, *EG_LEGACY_OPTS, "--", *ir], EG_PROXY),
        # gateway_provisioners 0.5.0 + Jupyter Server 2
        Spec("gp_kl_py", "python", True, [kl, *GP_OPTS, "--", *ipy], GP_PROVISIONER),
        Spec("gp_kl_ir", "r", True, [kl, *GP_OPTS[:10], "--", *ir], GP_PROVISIONER),
    ]
    return {s.name: s for s in specs}


def write_kernelspecs(root: Path, specs: dict[str, Spec]) -> Path:
    kernels = root / "share" / "jupyter" / "kernels"
    for spec in specs.values():
        d = kernels / spec.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": spec.argv,
                    "display_name": f"{spec.name} (kernel-launcher e2e)",
                    "language": spec.language,
                    "metadata": spec.metadata,
                    "env": spec.env,
                },
                indent=2,
            )
        )
    return root / "share" / "jupyter"


# Kernelspecs written by `kernel-launcher kernelspec install` (the command under test) rather
# than by this file: (name, --language, interpreter attribute of Paths, more options), per --for.
GENERATED = {
    "eg": [("gen_kl_py", "python", "py_kernel", []), ("gen_kl_ir", "r", "r", [])],
    "gp": [("gen_gp_kl_py", "python", "py_kernel", [])],
    # gateway_provisioners asking for CurveZMQ: ipykernel 7.4 takes the keys, 6.31 does not.
    "gp-curve": [
        ("gen_gp_curve_py7", "python", "py_lab", ["--transport-encryption", "required"]),
        ("gen_gp_curve_py6", "python", "py_kernel", ["--transport-encryption", "required"]),
    ],
}


def install_generated(jupyter_dir: Path, target: str, p: Paths) -> dict[str, Spec]:
    """Runs `kernel-launcher kernelspec install --for <target> --mode local` into
    jupyter_dir/kernels/<name> for each GENERATED spec; returns them as Specs. Without
    $KERNEL_LAUNCHER nothing is generated (the tests using them then fail on `launcher`)."""
    launcher = os.environ.get("KERNEL_LAUNCHER")
    if not launcher:
        return {}
    out = {}
    for name, language, interp, more in GENERATED[target]:
        d = jupyter_dir / "kernels" / name
        cmd = [
            str(Path(launcher).resolve()),
            "kernelspec",
            "install",
            "--for",
            target.split("-")[0],
            *more,
            "--mode",
            "local",
            "--language",
            language,
            "--python",
            getattr(p, interp),
            "--name",
            name,
            "--dir",
            str(d),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"kernelspec install failed ({r.returncode}): {cmd}\n{r.stderr}"
        spec = json.loads((d / "kernel.json").read_text())
        out[name] = Spec(name, language, True, spec["argv"], spec["metadata"], spec.get("env", {}))
    return out


@pytest.fixture(scope="session")
def specs(paths) -> dict[str, Spec]:
    return build_specs(paths)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kl-e2e")


# ----------------------------------------------------------------------------- servers


@dataclass
class Server:
    kind: str  # "eg" or "gp"
    proc: subprocess.Popen
    base_url: str
    token: str | None
    log_path: Path
    kernel_log_dir: Path
    specs: dict[str, Spec]

    def rest(self) -> JupyterRest:
        return JupyterRest(self.base_url, self.token)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 80, grep: str | None = None) -> str:
        lines = self.log_text().splitlines()
        if grep:
            lines = [ln for ln in lines if grep in ln]
        return "\n".join(lines[-n:])

    def kernel_log(self, kernel_id: str) -> str:
        path = self.kernel_log_dir / f"kernel-{kernel_id}.log"
        try:
            return path.read_text(errors="replace")
        except OSError:
            return f"(no kernel log at {path})"

    def reported_pids(self, kernel_id: str) -> list[dict]:
        """pid/pgid the launcher reported, as logged by the gateway at DEBUG level."""
        found = []
        for line in self.log_text().splitlines():
            if kernel_id in line and "'pid'" in line and ("Connection info received" in line or "Decrypted payload" in line):
                m_pid = re.search(r"'pid': '?(\d+)", line)
                m_pgid = re.search(r"'pgid': '?(\d+)", line)
                found.append(
                    {
                        "pid": int(m_pid.group(1)) if m_pid else None,
                        "pgid": int(m_pgid.group(1)) if m_pgid else None,
                        "line": line,
                    }
                )
        return found


def _start_server(kind: str, cmd: list[str], env: dict, base_url: str, token, log_path, klog, specs) -> Server:
    log_fh = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=log_fh,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=str(log_path.parent),
    )
    server = Server(kind, proc, base_url, token, log_path, klog, specs)
    try:
        wait_http_ok(f"{base_url}/api", proc, timeout=90, token=token)
    except Exception as exc:
        kill_tree(proc)
        pytest.fail(f"{kind} server did not become ready: {exc}\n--- log ---\n{server.log_tail(60)}", pytrace=False)
    return server


def _stop_server(server: Server) -> None:
    kill_tree(server.proc)
    # Whatever a test left behind (a failed test may leave kernels): make sure nothing of this
    # server's kernels survives the session. Leftovers are asserted per test, not here.
    for pid in pids_with_env("KL_E2E_SERVER", server.base_url):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _base_env(sd: Path, jupyter_path: list[Path], marker: str) -> dict[str, str]:
    return isolated_env(sd, marker, jupyter_path)


def eg_command(eg_python: str, port: int) -> list[str]:
    """EG 3.3.0 on 127.0.0.1:port, launching DistributedProcessProxy kernels on this host."""
    return [
        str(Path(eg_python).parent / "jupyter-enterprisegateway"),
        "--EnterpriseGatewayApp.ip=127.0.0.1",
        f"--EnterpriseGatewayApp.port={port}",
        "--EnterpriseGatewayApp.port_retries=0",
        "--EnterpriseGatewayApp.remote_hosts=localhost",
        "--log-level=DEBUG",
    ]


@pytest.fixture(scope="session")
def eg_server(paths, specs, session_dir) -> Server:
    """Jupyter Enterprise Gateway 3.3.0 on 127.0.0.1, DistributedProcessProxy launching on localhost.

    EG's DistributedProcessProxy resolves the chosen host with gethostbyname() and, when
    jupyter_client's localinterfaces says that IP is local (127.0.0.1 is), it Popen()s the argv
    directly (stdout/stderr -> $EG_KERNEL_LOG_DIR/kernel-<id>.log) instead of using SSH. The host
    list is EG_REMOTE_HOSTS (default "localhost") or the kernelspec's process_proxy.config.remote_hosts.
    """
    sd = session_dir / "eg"
    sd.mkdir()
    klog = sd / "kernel-logs"
    klog.mkdir()
    jp = write_kernelspecs(sd / "specs", specs)
    specs = {**specs, **install_generated(jp, "eg", paths)}
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = _base_env(sd, [jp, paths.ir_jupyter_path], base_url)
    env.update(
        {
            "EG_RESPONSE_IP": "127.0.0.1",
            "EG_RESPONSE_PORT": str(free_port()),
            "EG_REMOTE_HOSTS": "localhost",
            "EG_KERNEL_LOG_DIR": str(klog),
            "EG_LIST_KERNELS": "True",
            # Inherited into the launcher's environment, so leftovers can be found and reaped.
            "EG_INHERITED_ENVS": "KL_E2E_SERVER",
        }
    )
    server = _start_server("eg", eg_command(paths.py_eg, port), env, base_url, None, sd / "eg.log", klog, specs)
    yield server
    _stop_server(server)


@pytest.fixture(scope="session")
def gp_server(paths, specs, session_dir) -> Server:
    server = _gp_server(paths, specs, session_dir, "gp", [])
    yield server
    _stop_server(server)


@pytest.fixture(scope="session")
def gp_curve_server(paths, specs, session_dir) -> Server:
    """As gp_server, with Jupyter Server's transport_encryption=required (GP then asks a
    kernelspec that lists "curve" for CurveZMQ keys), and the "gp-curve" generated specs."""
    server = _gp_server(
        paths, specs, session_dir, "gp-curve", ["--MappingKernelManager.transport_encryption=required"]
    )
    yield server
    _stop_server(server)


def _gp_server(paths, specs, session_dir, kind: str, more_args: list[str]) -> Server:
    """Jupyter Server 2 with gateway_provisioners 0.5.0's DistributedProvisioner on localhost.

    GP's DistributedProvisioner picks a host from GP_REMOTE_HOSTS (default "localhost"),
    gethostbyname()s it and, if RemoteProvisionerBase.ip_is_local() (jupyter_client
    localinterfaces), launches the argv locally with jupyter_client's launch_kernel() and
    stdout/stderr -> $GP_KERNEL_LOG_DIR/kernel-<id>.log; otherwise it uses SSH (paramiko).
    """
    sd = session_dir / kind
    sd.mkdir()
    klog = sd / "kernel-logs"
    klog.mkdir()
    jp = write_kernelspecs(sd / "specs", specs)
    specs = {**specs, **install_generated(jp, kind, paths)}
    port = free_port()
    token = uuid.uuid4().hex
    base_url = f"http://127.0.0.1:{port}"
    env = _base_env(sd, [jp, paths.ir_jupyter_path], base_url)
    env.update(
        {
            "GP_RESPONSE_IP": "127.0.0.1",
            "GP_RESPONSE_PORT": str(free_port()),
            "GP_REMOTE_HOSTS": "localhost",
            "GP_KERNEL_LOG_DIR": str(klog),
            # GP refuses unauthorized_users (default: root); the launch env comes from the server's.
            "KERNEL_USERNAME": "kl-e2e",
        }
    )
    # Reference kernelspec made by GP's own tooling (it assembles launch_ipykernel.py with the
    # shared server_listener.py); only its interpreter is pointed at venv-kernel.
    subprocess.run(
        [
            str(Path(paths.py_gp).parent / "jupyter-ssh-spec"),
            "install",
            f"--prefix={sd / 'gp-own'}",
            "--kernel-name=gp_py_own",
            "--display-name=gp_py_own (gateway_provisioners launcher)",
            "--remote-hosts=localhost",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    own_dir = sd / "gp-own" / "share" / "jupyter"
    own_json = own_dir / "kernels" / "gp_py_own" / "kernel.json"
    own = json.loads(own_json.read_text())
    assert own["argv"][0] == "python", own["argv"]
    own["argv"][0] = paths.py_kernel
    own_json.write_text(json.dumps(own, indent=2))
    env["JUPYTER_PATH"] = os.pathsep.join([env["JUPYTER_PATH"], str(own_dir)])
    specs = {**specs, "gp_py_own": Spec("gp_py_own", "python", False, own["argv"], own["metadata"])}
    (sd / "root").mkdir()
    gp_bin = str(Path(paths.py_gp).parent / "jupyter-server")
    cmd = [
        gp_bin,
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",
        f"--ServerApp.root_dir={sd / 'root'}",
        "--log-level=DEBUG",
        *more_args,
    ]
    return _start_server("gp", cmd, env, base_url, token, sd / "server.log", klog, specs)


# ----------------------------------------------------------------------------- failure context


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """On a failed test, attach the gateway log lines and kernel log of its kernels."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    ctx = getattr(item, "funcargs", {}).get("failure_context") or []
    for server, kernel_id in ctx:
        sections = [
            f"--- {server.kind} log lines mentioning {kernel_id} ---",
            server.log_tail(150, grep=kernel_id),
            f"--- {server.kind} log tail ---",
            server.log_tail(40),
            f"--- kernel log {server.kernel_log_dir}/kernel-{kernel_id}.log (tail) ---",
            server.kernel_log(kernel_id)[-8000:],
        ]
        rep.sections.append((f"{server.kind} logs for kernel {kernel_id}", "\n".join(sections)))


@pytest.fixture
def failure_context():
    """Tests append (server, kernel_id); a failure report then carries those logs."""
    return []
