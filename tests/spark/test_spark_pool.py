"""A warm pool of Spark kernels in gateway-lite (`--pool NAME=N`): a pooled PySpark kernel
(lazy init mode, kernelspec written by `kernel-launcher kernelspec install --mode spark-local`)
starts its SparkContext in the background while it waits in the pool, so the request that
claims it answers `spark.range(10).count()` from a context that was started before the
request came.

Real peers: gateway-lite from target/debug (or $GATEWAY_LITE), kernel-launcher ($KERNEL_LAUNCHER),
spark-submit from the pyspark 4.3 venv (scripts/setup-spark.sh). Missing peers fail the test.

Run:  source ~/.cache/kernel-launcher/env.sh && source ~/.cache/kernel-launcher/spark-env.sh &&
      cargo build -p launcher -p gateway-lite &&
      KERNEL_LAUNCHER=$PWD/target/debug/kernel-launcher $KL_PY_EG -m pytest -v tests/spark/test_spark_pool.py
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from support.gateway import reap
from support.kernels import JupyterRest, isolated_env, kill_tree
from support.spark import KERNEL_INFO_TIMEOUT, SPARK_TIMEOUT, spec_name

REPO = Path(__file__).resolve().parent.parent.parent
WAIT = 180.0  # only against hangs: a Spark kernel's start on a busy 2-core machine


def gateway_lite() -> str:
    exe = os.environ.get("GATEWAY_LITE") or str(REPO / "target/debug/gateway-lite")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"gateway-lite not found at {exe}: run `cargo build -p gateway-lite` or set GATEWAY_LITE", pytrace=False)
    return exe


def pool_metric(base: str, token: str, name: str) -> float:
    text = requests.get(f"{base}/metrics", headers={"Authorization": f"token {token}"}, timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name} in\n{text}")


def wait_for(what: str, check, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"never happened within {timeout}s: {what}")


def state_logs_text(state: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (state / "logs").glob("*.log"))


def test_a_pooled_lazy_spark_kernel_has_its_context_started_before_the_claim(spark_kernelspecs, launcher, tmp_path):
    name = spec_name("local", "43", "lazy")
    token = uuid.uuid4().hex
    marker = f"gateway-lite-pool-{uuid.uuid4().hex}"
    state = tmp_path / "state"
    env = isolated_env(tmp_path, marker)
    env.update({"GATEWAY_LITE_AUTH_TOKEN": token, "GATEWAY_LITE_LOG": "info", "SPARK_LOCAL_IP": "127.0.0.1"})
    cmd = [gateway_lite(), "--ip", "127.0.0.1", "--port", "0", "--launcher", launcher,
           "--kernelspec-dir", str(spark_kernelspecs / "kernels"), "--state-dir", str(state),
           "--kernel-env", "SPARK_LOCAL_IP,KL_E2E_SERVER", "--pool", f"{name}=1",
           "--shutdown-kernels-on-exit"]  # fmt: skip
    log_path = tmp_path / "gateway-lite.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                text=True, start_new_session=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, f"gateway-lite did not start: {line!r}\n{log_path.read_text()}"
        base = line.split("listening on", 1)[1].strip().partition("?")[0].rstrip("/")
        ready = f'gateway_lite_pool_ready{{kernel_name="{name}"}}'
        wait_for("the pooled Spark kernel ready", lambda: pool_metric(base, token, ready) == 1)
        # The pooled kernel's SparkContext starts in the background (lazy pre-warm) and is up
        # once its driver has a block manager: seen in the launcher's log (spark-submit's driver
        # log), without sending the kernel anything.
        wait_for("the pooled kernel's SparkContext up", lambda: "Initialized BlockManager" in state_logs_text(state))

        rest = JupyterRest(base, token)
        claimed_at_ms = time.time() * 1000
        t0 = time.monotonic()
        r = rest.start_kernel(name, {"KERNEL_USERNAME": "kl-spark"})
        assert r.status_code == 201, f"POST: HTTP {r.status_code}: {r.text}\n{log_path.read_text()[-3000:]}"
        kid = r.json()["id"]
        assert pool_metric(base, token, 'gateway_lite_pool_requests_total{outcome="hit"}') == 1
        ch = rest.channels(kid)
        ch.kernel_info(timeout=KERNEL_INFO_TIMEOUT)
        info_s = time.monotonic() - t0
        mid = ch.send(ch._msg("execute_request", {"code": "spark.range(10).count()", "silent": False,
                                                  "store_history": True, "user_expressions": {},
                                                  "allow_stdin": False, "stop_on_error": True}))  # fmt: skip
        res = ch.collect(mid, timeout=SPARK_TIMEOUT)
        count_s = time.monotonic() - t0
        assert res.status == "ok", res
        results = [m["content"]["data"]["text/plain"] for m in res.outputs if m.get("msg_type") == "execute_result"]
        assert results == ["10"], res
        reply = next(m for m in res.outputs if m.get("msg_type") == "execute_reply")
        assert reply["content"]["execution_count"] == 1, "the pooled kernel ran nothing before its claim"
        started = ch.execute("print(spark.sparkContext.startTime)")
        assert started.status == "ok", started
        start_ms = int(started.text.strip().splitlines()[-1])
        assert start_ms < claimed_at_ms, "the SparkContext was started before the request (in the pool)"
        print(f"pooled Spark kernel: POST -> kernel_info_reply {info_s * 1000:.0f} ms, "
              f"POST -> count() result {count_s:.2f} s; context started {(claimed_at_ms - start_ms) / 1000:.1f} s before the POST")  # fmt: skip
        ch.close()
        rd = rest.delete(kid)
        assert rd.status_code == 204, rd.text
    finally:
        kill_tree(proc, grace=60)
        reap(marker)
