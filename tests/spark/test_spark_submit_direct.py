"""kernel-launcher under a real spark-submit, without a gateway in between.

Two lifecycle paths that the EG tests (message-mode interrupts, orderly DELETE)
do not reach:
- an interrupt delivered as a signal through the launcher's comm port (what EG
  sends for `interrupt_mode: signal`) also cancels the running Spark job;
- when the driver JVM dies, the launcher sees its stdin close and takes the
  kernel down, so no kernel is left orphaned.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient

from support.kernels import proc_of, wait_gone

PATIENCE = 120


def _alive(pid: int) -> bool:
    p = proc_of(pid)
    return p is not None and p.alive()


class Driver:
    """spark-submit (local mode) with kernel-launcher as the driver's Python, in pull mode:
    the connection file and the launcher's log (spark-submit's stdout) tell us everything."""

    def __init__(self, launcher: str, venv, work: Path, kernel_id: str):
        self.work = work
        self.conn = work / f"kernel-{kernel_id}.json"
        self.log_path = work / "spark-submit.log"
        primary = work / "primary.py"
        primary.write_text("raise SystemExit('never run')\n")
        env = dict(os.environ, SPARK_HOME=str(venv.spark_home), SPARK_LOCAL_IP="127.0.0.1")
        cmd = [
            str(venv.spark_home / "bin" / "spark-submit"),
            "--master", "local[1]",
            "--name", kernel_id,
            "--conf", "spark.driver.host=127.0.0.1",
            "--conf", "spark.driver.bindAddress=127.0.0.1",
            "--conf", f"spark.pyspark.python={venv.python}",
            "--conf", "spark.ui.showConsoleProgress=false",
            "--conf", f"spark.pyspark.driver.python={launcher}",
            str(primary), str(self.conn),
            "--kernel-id", kernel_id,
            "--spark-context-initialization-mode", "lazy",
            "--interpreter", venv.python,
        ]
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=open(self.log_path, "w"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + PATIENCE
        while not (self.conn.exists() and self.comm_port()):
            assert self.proc.poll() is None, f"spark-submit exited early:\n{self.log()}"
            assert time.monotonic() < deadline, f"no connection file:\n{self.log()}"
            time.sleep(0.1)
        self.client = BlockingKernelClient()
        self.client.load_connection_info(json.loads(self.conn.read_text()) | {"ip": "127.0.0.1"})
        # No heartbeat channel: with one, wait_for_ready takes a kernel whose heartbeat has not
        # answered within 1 s (a slow start under load) for a dead one.
        self.client.start_channels(hb=False)
        self.client.wait_for_ready(timeout=PATIENCE)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _logged_int(self, pattern: str) -> int | None:
        m = re.search(pattern, self.log())
        return int(m.group(1)) if m else None

    def comm_port(self) -> int | None:
        return self._logged_int(r"comm port (\d+)")

    def launcher_pid(self) -> int:
        return self._logged_int(r"starting kernel \S+ \(pid (\d+)")

    def kernel_pid(self) -> int:
        return self._logged_int(r"kernel pid (\d+)")

    def execute(self, code: str, until: str | None = None) -> dict:
        """Run code; returns {'text','ename','status'}. With `until`, return once that text
        shows up in the output, leaving the cell running."""
        mid = self.client.execute(code)
        out = {"text": "", "ename": None, "status": None, "msg_id": mid}
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            msg = self.client.get_iopub_msg(timeout=PATIENCE)
            if msg["parent_header"].get("msg_id") != mid:
                continue
            t, c = msg["msg_type"], msg["content"]
            if t == "stream":
                out["text"] += c["text"]
            elif t == "execute_result":
                out["text"] += c["data"].get("text/plain", "")
            elif t == "error":
                out["ename"] = c["ename"]
            elif t == "status" and c["execution_state"] == "idle":
                out["status"] = "idle"
                return out
            if until and until in out["text"]:
                return out
        raise AssertionError(f"cell did not finish: {code!r}: {out}\n{self.log()}")

    def finish(self, mid: str) -> dict:
        out = {"text": "", "ename": None}
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            msg = self.client.get_iopub_msg(timeout=PATIENCE)
            if msg["parent_header"].get("msg_id") != mid:
                continue
            if msg["msg_type"] == "error":
                out["ename"] = msg["content"]["ename"]
            elif msg["msg_type"] == "stream":
                out["text"] += msg["content"]["text"]
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return out
        raise AssertionError(f"interrupted cell did not finish\n{self.log()}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        for pid in (self.launcher_pid(), self.kernel_pid()):
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.proc.wait(timeout=30)
        self.client.stop_channels()


@pytest.fixture
def driver(launcher, venvs, tmp_path, request):
    d = Driver(launcher, venvs["43"], tmp_path, f"direct-{request.node.name[:20]}-{os.getpid()}")
    yield d
    d.stop()


def test_comm_port_interrupt_cancels_the_spark_job(driver):
    assert driver.execute("spark.range(10).count()")["text"].strip() == "10"
    running = driver.execute(
        "print('job started', flush=True)\n"
        "spark.sparkContext.parallelize(range(2), 2).map(lambda x: __import__('time').sleep(600)).count()",
        until="job started",
    )
    # Wait until Spark really runs the job, then interrupt the way EG does for
    # interrupt_mode "signal": {"signum": 2} on the launcher's comm port.
    time.sleep(3)
    with socket.create_connection(("127.0.0.1", driver.comm_port()), timeout=5) as s:
        s.sendall(b'{"signum": 2}')
    res = driver.finish(running["msg_id"])
    # The job (600 s of sleeps) was cancelled: its Spark call fails instead of running on.
    assert res["ename"] == "Py4JJavaError", f"the Spark job was not cancelled: {res}\n{driver.log()}"
    assert "interrupt: cancelled Spark jobs" in driver.log(), driver.log()
    after = driver.execute("spark.range(3).count()")
    assert after["text"].strip().endswith("3"), after
    assert _alive(driver.kernel_pid())


def test_driver_jvm_death_takes_the_kernel_down(driver):
    assert driver.execute("1+1")["text"].strip() == "2"
    launcher_pid, kernel_pid = driver.launcher_pid(), driver.kernel_pid()
    assert launcher_pid and kernel_pid and _alive(kernel_pid)
    # spark-submit execs the driver JVM, so the Popen pid is the JVM.
    os.kill(driver.proc.pid, signal.SIGKILL)
    left = wait_gone({p for p in (proc_of(launcher_pid), proc_of(kernel_pid)) if p}, timeout=60)
    assert not left, f"launcher/kernel outlived the driver JVM: {left}\n{driver.log()}"
