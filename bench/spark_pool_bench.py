"""A pooled Spark kernel's first count(), through gateway-lite (bench/spark.sh runs it after
bench/spark_bench.py, whose eg-lazy rows are Enterprise Gateway 3.3.0's own Spark launcher in the
same run).

One kernelspec written by `kernel-launcher kernelspec install --mode spark-local
--spark-init-mode lazy` (spark-submit --master local[*], pyspark 4.3). Two gateway-lite
processes serve it: one with `--pool NAME=1`, one without. Per run, on each:
  pooled     wait until the pool holds a ready kernel whose SparkContext is up (the driver log,
             which gateway-lite keeps in its state directory, says "Initialized BlockManager";
             nothing is sent to the kernel), then t=0: POST /api/kernels -> 201, WebSocket
             kernel_info_reply, then `spark.range(10).count()` -> "10".
  on demand  the same client steps on the gateway without a pool (t=0 is the POST: the launch,
             spark-submit and the context's start are all inside the figure).
Printed: medians (min-max) over the runs of POST -> kernel_info_reply and POST -> count done.
The pool's refill (another spark-submit and driver JVM) waits --refill-delay seconds (default
30, gateway-lite's --pool-refill-delay) so it does not run while the claimed kernel runs its
first job on the same cores; with the gateway's default 0.25 s it does, which on 2 cores
costs that first job about as much time as the pool saved.

Usage: spark_pool_bench.py --launcher PATH [--runs N]   (tests/ on PYTHONPATH, venv-eg python)
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

from support.kernels import JupyterRest, isolated_env, kill_tree, pids_with_env

REPO = Path(__file__).resolve().parent.parent
SPEC = "spark_pool_bench"
WAIT = 300.0  # only against hangs


def load_env() -> dict[str, str]:
    cache = Path(os.environ.get("KL_CACHE") or Path.home() / ".cache" / "kernel-launcher")
    values = {}
    for name in ("env.sh", "spark-env.sh"):
        for line in (cache / name).read_text().splitlines():
            if line.startswith("export "):
                k, _, raw = line[len("export ") :].partition("=")
                parts = shlex.split(raw)
                values[k] = parts[0] if parts else ""
    values.update({k: v for k, v in os.environ.items() if k.startswith("KL_")})
    return values


def log(msg: str) -> None:
    print(f"[spark-pool-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_for(what: str, check, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not within {timeout}s")


class Gateway:
    def __init__(self, gateway: str, launcher: str, specs: Path, work: Path, marker: str, pool: bool,
                 refill_delay: str):
        self.token = uuid.uuid4().hex
        self.state = work / "state"
        env = isolated_env(work, marker)
        env.update({"GATEWAY_LITE_AUTH_TOKEN": self.token, "SPARK_LOCAL_IP": "127.0.0.1"})
        cmd = [gateway, "--ip", "127.0.0.1", "--port", "0", "--launcher", launcher, "--kernelspec-dir", str(specs),
               "--state-dir", str(self.state), "--kernel-env", "SPARK_LOCAL_IP,KL_E2E_SERVER",
               "--shutdown-kernels-on-exit", "--kernel-log-retention", "600"]  # fmt: skip
        if pool:
            cmd += ["--pool", f"{SPEC}=1", "--pool-refill-delay", refill_delay]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(work / "gateway-lite.log", "w"),
                                     stdin=subprocess.DEVNULL, env=env, text=True, start_new_session=True)  # fmt: skip
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"gateway-lite did not start: {line!r}")
        self.base = line.split("listening on", 1)[1].strip().partition("?")[0].rstrip("/")
        self.rest = JupyterRest(self.base, self.token)

    def metric(self, name: str) -> float | None:
        text = requests.get(f"{self.base}/metrics", headers=self.rest.headers, timeout=30).text
        return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(name + " ")), None)

    def logs_with(self, needle: str) -> set[str]:
        """Kernel ids whose launcher log contains `needle`."""
        return {p.stem for p in (self.state / "logs").glob("*.log") if needle in p.read_text(errors="replace")}

    def stop(self) -> None:
        kill_tree(self.proc, grace=60)


def one_run(gw: Gateway, pooled: bool, seen: set[str]) -> dict:
    """One claim (or on-demand start) and its first count(); `seen`: kernel ids used before."""
    if pooled:
        wait_for("a ready pooled kernel", lambda: gw.metric(f'gateway_lite_pool_ready{{kernel_name="{SPEC}"}}') == 1)
        # The pooled kernel is the one whose log is new; its context is up once the log says so.
        wait_for("the pooled kernel's SparkContext up", lambda: gw.logs_with("Initialized BlockManager") - seen)
    t0 = time.monotonic()
    r = gw.rest.start_kernel(SPEC, {"KERNEL_USERNAME": "bench"})
    if r.status_code != 201:
        raise RuntimeError(f"POST: HTTP {r.status_code}: {r.text[:500]}")
    kid = r.json()["id"]
    seen.add(kid)
    ch = gw.rest.channels(kid)
    try:
        ch.kernel_info(timeout=WAIT)
        t_info = time.monotonic() - t0
        res = ch.execute("spark.range(10).count()", timeout=WAIT)
        t_count = time.monotonic() - t0
    finally:
        ch.close()
    results = [m["content"]["data"]["text/plain"] for m in res.outputs if m.get("msg_type") == "execute_result"]
    if res.status != "ok" or results != ["10"]:
        raise RuntimeError(f"count(): {res.status} {res.ename} {res.evalue} {results}")
    gw.rest.delete(kid)
    return {"info_s": t_info, "count_s": t_count}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--launcher", required=True)
    ap.add_argument("--gateway", default=str(REPO / "target/release/gateway-lite"))
    ap.add_argument("--runs", type=int, default=3)
    # The refill (another spark-submit and driver JVM) would start while the claimed kernel runs
    # its first Spark job; on 2 cores that doubles the job's time, so it waits this long.
    ap.add_argument("--refill-delay", default="30")
    a = ap.parse_args()
    env = load_env()
    work = Path(tempfile.mkdtemp(prefix="spark-pool-bench-"))
    specs = work / "kernels"
    opts = ("--conf spark.driver.host=127.0.0.1 --conf spark.driver.bindAddress=127.0.0.1 "
            f"--conf spark.pyspark.python={env['KL_PY_SPARK43']} --conf spark.ui.enabled=false")  # fmt: skip
    subprocess.run([a.launcher, "kernelspec", "install", "--mode", "spark-local", "--dir", str(specs / SPEC),
                    "--name", SPEC, "--spark-home", env["KL_SPARK_HOME43"], "--launcher", a.launcher,
                    "--python", env["KL_PY_SPARK43"], "--spark-init-mode", "lazy", "--extra-spark-opts", opts],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    marker = f"spark-pool-bench-{uuid.uuid4().hex}"
    rows: dict[str, list[dict]] = {"gateway-lite, pooled": [], "gateway-lite, on demand": []}
    log(f"work dir {work}")
    gateways = {}
    try:
        for label, pooled in (("gateway-lite, pooled", True), ("gateway-lite, on demand", False)):
            d = work / ("pooled" if pooled else "on-demand")
            d.mkdir()
            gateways[label] = (Gateway(a.gateway, a.launcher, specs, d, marker, pooled, a.refill_delay), pooled, set())
        # Interleaved round by round, so both see the same machine.
        for i in range(a.runs):
            for label, (gw, pooled, seen) in gateways.items():
                r = one_run(gw, pooled, seen)
                log(f"{label} run {i + 1}: kernel_info {r['info_s'] * 1000:.0f} ms, count done {r['count_s']:.2f} s")
                rows[label].append(r)
    finally:
        for gw, _, _ in gateways.values():
            gw.stop()
        for pid in pids_with_env("KL_E2E_SERVER", marker):
            try:
                os.kill(pid, 9)
            except OSError:
                pass

    def med(xs):
        return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"

    print(f"\n# pooled Spark kernel (spark-local, lazy, pyspark 4.3) through gateway-lite "
          f"(--pool-refill-delay {a.refill_delay}); {a.runs} runs, "
          f"median (min-max) seconds from the POST; loadavg {os.getloadavg()[0]:.1f}")
    print(f"{'':28}{'POST -> kernel_info_reply':>28}{'POST -> count() done':>26}")
    for label, rs in rows.items():
        print(f"{label:28}{med([r['info_s'] for r in rs]):>28}{med([r['count_s'] for r in rs]):>26}")


if __name__ == "__main__":
    main()
