"""Kernel handling for the Spark tests (tests/spark): start a kernel through EG's REST API, talk
to it over EG's WebSocket (the client in support.kernels), DELETE it and prove nothing it
started survives."""

from __future__ import annotations

import os
import signal
import time

from support.kernels import (
    ExecResult,
    Proc,
    describe,
    descendants,
    kernel_processes,
    pids_with_env,
    proc_of,
    wait_gone,
)

# Limits only against hangs; nothing here asserts speed.
KERNEL_INFO_TIMEOUT = 120
SPARK_TIMEOUT = 180  # a first Spark cell (JVM side SparkContext, executor launch on 2 busy cores)
GONE_TIMEOUT = 60

# Processes the Spark kernels start: the spark-submit driver JVM, kernel-launcher, ipykernel,
# PySpark worker daemons, and standalone executors (CoarseGrainedExecutorBackend JVMs).
_INTERESTING = ("java", "kernel-launcher", "ipykernel", "pyspark.daemon", "pyspark.worker", "spark-submit", "run.sh")


def spec_name(kind: str, ver: str, mode: str) -> str:
    """Name of a generated (`kernel-launcher kernelspec install`) kernelspec in the test JUPYTER_PATH (see spark_kernelspecs in
    tests/spark/conftest.py).
    kind: local | standalone | yarn_client | yarn_cluster; ver: 43 | 35; mode: lazy | eager | none."""
    return f"spark_python_{kind}_{ver}_{mode}"


def _interesting(p: Proc) -> bool:
    return any(word in p.cmdline for word in _INTERESTING)


def spark_processes(server, cluster=None) -> set[Proc]:
    """java / kernel-launcher / ipykernel / pyspark worker processes started through this EG
    (they inherit KL_E2E_SERVER=<EG url> via EG_INHERITED_ENVS) or by the standalone Worker
    (executors are its children)."""
    found = {p for p in (proc_of(pid) for pid in pids_with_env("KL_E2E_SERVER", server.base_url)) if p}
    if cluster is not None:
        found |= descendants({cluster.worker.pid})
    return {p for p in found if _interesting(p)}


def sleep_job_cell(sc_expr: str = "spark.sparkContext") -> str:
    """A cell whose Spark job runs (sleeps) for 10 minutes; a side thread prints 'job running'
    once Spark reports the job as active, so the interrupt is sent while the job really runs."""
    return f"""
import threading, time
_kl_sc = {sc_expr}
def _kl_watch():
    while not _kl_sc.statusTracker().getActiveJobsIds():
        time.sleep(0.2)
    print("job running", flush=True)
threading.Thread(target=_kl_watch, daemon=True).start()
_kl_sc.parallelize(range(2), 2).map(lambda x: __import__('time').sleep(600)).count()
"""


class SparkKernel:
    """One kernel started by EG from a Spark kernelspec."""

    def __init__(self, server, name: str, failure_context, cluster=None, env: dict | None = None):
        self.server = server
        self.rest = server.rest()
        self.name = name
        self.cluster = cluster
        self.failure_context = failure_context
        self.env = {"KERNEL_USERNAME": "kl-spark", "KERNEL_LAUNCH_TIMEOUT": "120", **(env or {})}
        self.kid: str | None = None
        self.ch = None
        self.seen: set[Proc] = set()
        self.before: set[Proc] = set()
        self.deleted = False

    def start(self) -> dict:
        self.before = spark_processes(self.server, self.cluster)
        r = self.rest.start_kernel(self.name, self.env)
        assert r.status_code == 201, f"POST /api/kernels {self.name}: HTTP {r.status_code}: {r.text[:2000]}"
        self.kid = r.json()["id"]
        self.failure_context.append((self.server, self.kid))
        self.seen |= kernel_processes(self.kid)
        assert self.seen, f"no process found for kernel {self.kid} after start"
        self.ch = self.rest.channels(self.kid)
        return self.ch.kernel_info(timeout=KERNEL_INFO_TIMEOUT)

    def execute(self, code: str, timeout: float = SPARK_TIMEOUT) -> ExecResult:
        return self.ch.execute(code, timeout=timeout)

    def value(self, code: str, timeout: float = SPARK_TIMEOUT) -> str:
        """Runs `code` (an expression or a cell ending in one) and returns its execute_result
        text/plain (stream output, e.g. log lines written to the kernel's stderr, is ignored)."""
        res = self.execute(code, timeout)
        assert res.status == "ok", f"{code!r} -> {res.status} {res.ename}: {res.evalue}\n{res.text[-3000:]}"
        results = [
            m["content"].get("data", {}).get("text/plain", "")
            for m in res.outputs
            if m.get("msg_type") == "execute_result"
        ]
        assert len(results) == 1, f"{code!r}: expected one execute_result, got {results}; output: {res.text[-2000:]}"
        return results[0].strip()

    def track(self) -> None:
        if self.kid:
            self.seen |= kernel_processes(self.kid)
        self.seen |= spark_processes(self.server, self.cluster) - self.before

    def delete_and_check_clean(self) -> None:
        """DELETE the kernel; every process it started (driver JVM, launcher, kernel, PySpark
        workers, standalone executors) must be gone afterwards."""
        self.track()
        if self.ch:
            self.ch.close()
            self.ch = None
        print(f"kernel {self.kid}: processes before DELETE: {describe(self.seen)}")
        rd = self.rest.delete(self.kid)
        self.deleted = True
        assert rd.status_code == 204, f"DELETE: HTTP {rd.status_code}: {rd.text[:2000]}"
        survivors = wait_gone(self.seen, GONE_TIMEOUT)
        assert not survivors, f"processes left after DELETE: {describe(survivors)}"
        deadline = time.monotonic() + GONE_TIMEOUT
        new = spark_processes(self.server, self.cluster) - self.before
        while new and time.monotonic() < deadline:
            time.sleep(0.5)
            new = {p for p in new if p.alive()}
        assert not new, f"Spark-related processes started during the test survive DELETE: {describe(new)}"
        late = kernel_processes(self.kid)
        assert not late, f"processes of kernel {self.kid} found after DELETE: {describe(late)}"

    def cleanup(self) -> None:
        if self.ch:
            self.ch.close()
        if self.kid and not self.deleted:
            try:
                self.rest.delete(self.kid)
            except Exception:
                pass
        if self.kid:
            self.track()
        for p in self.seen:
            if p.alive():
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except OSError:
                    pass
