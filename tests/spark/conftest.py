"""Fixtures for the real-peer Spark tests.

pytest runs from venv-eg's python, like tests/eg. The EG server machinery (environment file,
server start/stop, failure report hook) is reused from tests/eg/conftest.py by importing it as
a module; only the Spark parts live here:

  * venv-spark43 / venv-spark35 (scripts/setup-spark.sh, $KL_CACHE/spark-env.sh)
  * kernelspecs written by the launcher under test (`kernel-launcher kernelspec install --mode
    spark-*`), one set per (pyspark version, init mode), suffix _<ver>_<mode>, e.g.
    spark_python_local_43_lazy
  * one Jupyter Enterprise Gateway 3.3.0 (DistributedProcessProxy on localhost) whose JUPYTER_PATH
    holds those kernelspecs
  * one Spark standalone cluster (Master + Worker from pyspark 4.3's spark-class), started on first
    use and shared by the session

All traffic stays on 127.0.0.1: SPARK_LOCAL_IP=127.0.0.1 reaches spark-submit through EG's
EG_INHERITED_ENVS (EG passes only KERNEL_*, inherited and kernelspec variables to the launcher
when the request carries an `env`), and the kernelspecs get --conf spark.driver.host=127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.kernels import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
EG_TESTS = REPO / "tests" / "eg"


def _import_eg_conftest():
    """tests/eg/conftest.py as a plain module (its fixtures are not registered here)."""
    spec = importlib.util.spec_from_file_location("kl_eg_conftest", EG_TESTS / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


egc = _import_eg_conftest()

SPARK_MODES = ("spark-local", "spark-standalone", "spark-yarn-client", "spark-yarn-cluster")
MODES = ("lazy", "eager", "none")
VERSIONS = ("43", "35")


def _load_spark_env() -> dict[str, str]:
    values = dict(egc.KL_ENV)
    env_file = Path(values["KL_CACHE"]) / "spark-env.sh"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            line = line.strip()
            if line.startswith("export "):
                key, _, raw = line[len("export ") :].partition("=")
                parts = shlex.split(raw)
                values[key] = parts[0] if parts else ""
    for key in ("KL_PY_SPARK43", "KL_PY_SPARK35", "KL_SPARK_HOME43", "KL_SPARK_HOME35"):
        if os.environ.get(key):
            values[key] = os.environ[key]
    return values


KL_ENV = _load_spark_env()


def _need(key: str, how: str) -> str:
    value = KL_ENV.get(key)
    if not value:
        pytest.fail(f"{key} is not known: run {how} first", pytrace=False)
    return value


# Failure reports: the same hook as tests/eg (gateway log lines + kernel log for the kernels a
# test registered in `failure_context`).
pytest_runtest_makereport = egc.pytest_runtest_makereport


@pytest.fixture
def failure_context():
    return []


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class SparkVenv:
    ver: str  # "43" or "35"
    python: str
    spark_home: Path

    @property
    def label(self) -> str:
        return f"pyspark{self.ver[0]}.{self.ver[1]}"




@pytest.fixture(scope="session")
def venvs() -> dict[str, SparkVenv]:
    out = {}
    for ver in VERSIONS:
        py = _need(f"KL_PY_SPARK{ver}", "scripts/setup-spark.sh")
        home = Path(_need(f"KL_SPARK_HOME{ver}", "scripts/setup-spark.sh"))
        if not os.access(py, os.X_OK) or not (home / "bin" / "spark-submit").is_file():
            pytest.fail(f"venv-spark{ver} is incomplete ({py}, {home}): run scripts/setup-spark.sh", pytrace=False)
        out[ver] = SparkVenv(ver, py, home)
    try:
        subprocess.run(["java", "-version"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"`java -version` does not work ({exc}); Spark needs Java 17", pytrace=False)
    return out


@pytest.fixture(scope="session")
def eg_python() -> str:
    return _need("KL_PY_EG", "scripts/setup-env.sh")


@pytest.fixture(scope="session")
def eg_sdist() -> Path:
    return Path(_need("KL_EG_SDIST", "scripts/setup-env.sh"))


@pytest.fixture(scope="session")
def spark_session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kl-spark")


@pytest.fixture(scope="session")
def master_port() -> int:
    """Port of the standalone Master; fixed before the kernelspecs are written."""
    return free_port()


def extra_spark_opts(venv: SparkVenv) -> str:
    """spark-submit options every test kernelspec gets through `kernelspec install --extra-spark-opts`."""
    return " ".join(
        [
            "--conf spark.driver.host=127.0.0.1",
            "--conf spark.driver.bindAddress=127.0.0.1",
            # executors (local worker processes and standalone executors) run this venv's python
            f"--conf spark.pyspark.python={venv.python}",
            "--conf spark.ui.showConsoleProgress=false",
            # small enough for the 1 GB test Worker; a single core per application
            "--conf spark.executor.memory=512m",
            "--conf spark.cores.max=1",
        ]
    )


def install_spark_specs(kernels: Path, launcher: str, venv: SparkVenv, mode: str, master_url: str, suffix: str) -> str:
    """`kernel-launcher kernelspec install` once per Spark deployment, into kernels/<name><suffix>."""
    out = []
    for spark_mode in SPARK_MODES:
        name = "spark_python_" + spark_mode.removeprefix("spark-").replace("-", "_")
        cmd = [
            launcher,
            "kernelspec",
            "install",
            "--mode",
            spark_mode,
            "--dir",
            str(kernels / f"{name}{suffix}"),
            "--name",
            f"{name}{suffix}",
            "--spark-home",
            str(venv.spark_home),
            "--launcher",
            launcher,
            "--python",
            venv.python,
            "--spark-init-mode",
            mode,
            "--extra-spark-opts",
            extra_spark_opts(venv),
        ]
        if spark_mode == "spark-standalone":
            cmd += ["--master-url", master_url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"kernelspec install failed ({r.returncode}): {cmd}\n{r.stdout}\n{r.stderr}"
        out.append(r.stdout)
    return "".join(out)


@pytest.fixture(scope="session")
def spark_kernelspecs(spark_session_dir, launcher, venvs, master_port) -> Path:
    """Runs `kernelspec install` per (pyspark version, mode, deployment); returns the JUPYTER_PATH entry."""
    jp = spark_session_dir / "jupyter"
    kernels = jp / "kernels"
    kernels.mkdir(parents=True)
    for ver, venv in venvs.items():
        for mode in MODES:
            install_spark_specs(kernels, launcher, venv, mode, f"spark://127.0.0.1:{master_port}", f"_{ver}_{mode}")
    return jp


# ----------------------------------------------------------------------------- EG server


@pytest.fixture(scope="session")
def spark_eg(spark_session_dir, spark_kernelspecs, eg_python):
    """Jupyter Enterprise Gateway 3.3.0 on 127.0.0.1 serving the generated Spark kernelspecs
    (DistributedProcessProxy launches run.sh locally with Popen, output to the kernel log)."""
    sd = spark_session_dir / "eg"
    sd.mkdir()
    klog = sd / "kernel-logs"
    klog.mkdir()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = egc._base_env(sd, [spark_kernelspecs], base_url)
    env.update(
        {
            "SPARK_LOCAL_IP": "127.0.0.1",
            "EG_RESPONSE_IP": "127.0.0.1",
            "EG_RESPONSE_PORT": str(free_port()),
            "EG_REMOTE_HOSTS": "localhost",
            "EG_KERNEL_LOG_DIR": str(klog),
            # KL_E2E_SERVER lets the session end reap leftovers; SPARK_LOCAL_IP keeps Spark on loopback.
            "EG_INHERITED_ENVS": "KL_E2E_SERVER,SPARK_LOCAL_IP",
        }
    )
    server = egc._start_server("eg", egc.eg_command(eg_python, port), env, base_url, None, sd / "eg.log", klog, {})
    yield server
    egc._stop_server(server)


# ----------------------------------------------------------------------------- standalone cluster


@dataclass
class Cluster:
    url: str
    master: subprocess.Popen
    worker: subprocess.Popen
    master_log: Path
    worker_log: Path

    def pids(self) -> set[int]:
        return {self.master.pid, self.worker.pid}


def _wait_log(path: Path, needle: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    raise RuntimeError(f"{needle!r} not seen in {path} (rc={proc.poll()}):\n{text[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def standalone_cluster(venvs, spark_session_dir, master_port):
    """Spark standalone Master + Worker (pyspark 4.3's spark-class) on 127.0.0.1, one per session.
    spark-class execs java, so the Popen pid is the JVM; both are stopped by pid at the end."""
    home = venvs["43"].spark_home
    d = spark_session_dir / "standalone"
    d.mkdir()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_HOME": str(home), "SPARK_WORKER_DIR": str(d / "work")}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    url = f"spark://127.0.0.1:{master_port}"
    mlog, wlog = d / "master.log", d / "worker.log"
    spark_class = str(home / "bin" / "spark-class")
    master = subprocess.Popen(
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
         "--port", str(master_port), "--webui-port", str(free_port())],
        env=env, stdout=open(mlog, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    worker = None
    try:
        _wait_log(mlog, "I have been elected leader", master, 90)
        worker = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
             "--cores", "1", "--memory", "1g", "--webui-port", str(free_port())],
            env=env, stdout=open(wlog, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_log(wlog, "Successfully registered with master", worker, 90)
    except Exception as exc:
        if worker is not None:
            _stop(worker)
        _stop(master)
        pytest.fail(f"Spark standalone cluster did not start: {exc}", pytrace=False)
    yield Cluster(url, master, worker, mlog, wlog)
    _stop(worker)
    _stop(master)


__all__ = ["SparkVenv", "Cluster"]
