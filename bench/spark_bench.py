"""Spark pre-warm benchmark: kernel-launcher (none / lazy / eager) against Enterprise Gateway
3.3.0's own launch_ipykernel.py (lazy), all under the same spark-submit in local mode, same
machine, same run, interleaved round by round.

Each run:
  1. EG's own ResponseManager (tests/eg/helpers/eg_receive_payload.py, in venv-eg) listens for
     the connection payload and gives us its response address and public key;
  2. t=0: spark-submit --master local[*] ... with spark.pyspark.driver.python = kernel-launcher
     (primary resource: a dummy .py) or = venv-spark43's python (primary resource: EG's
     launch_ipykernel.py), launcher options exactly as EG's kernelspecs pass them;
  3. the payload is decrypted by EG's code; jupyter_client connects with it;
  4. kernel_info_request until the reply ("kernel_info");
  5. `1+1` right after it ("1+1 latency" = send -> reply);
  6. right after that, the first Spark cell: `spark.range(10).count()` ("count done"); in
     mode none no `spark` exists, so the cell builds it: SparkSession.builder.getOrCreate();
  7. "spark ready" = when the pre-warm logged "Spark is ready" (kernel-launcher writes it to the
     kernel's stderr, which spark-submit copies to its stdout); for none it is the count's time;
  8. shutdown_request; spark-submit must exit.
All times are seconds from the spark-submit start.

Usage: spark_bench.py --launcher PATH [--runs N] [--out FILE.jsonl]
Paths come from $KL_CACHE/env.sh and $KL_CACHE/spark-env.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from jupyter_client import BlockingKernelClient

REPO = Path(__file__).resolve().parent.parent
RECEIVER = REPO / "tests" / "eg" / "helpers" / "eg_receive_payload.py"
VARIANTS = ["kl-none", "kl-lazy", "kl-eager", "eg-lazy"]
READY_LINE = "[kernel-launcher spark] Spark is ready"
TIMEOUT = 180


def load_env() -> dict[str, str]:
    cache = Path(os.environ.get("KL_CACHE") or Path.home() / ".cache" / "kernel-launcher")
    values = {}
    for name in ("env.sh", "spark-env.sh"):
        f = cache / name
        if not f.is_file():
            sys.exit(f"{f} missing: run scripts/setup-env.sh and scripts/setup-spark.sh")
        for line in f.read_text().splitlines():
            if line.startswith("export "):
                k, _, raw = line[len("export ") :].partition("=")
                parts = shlex.split(raw)
                values[k] = parts[0] if parts else ""
    values.update({k: v for k, v in os.environ.items() if k.startswith("KL_")})
    return values


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Output:
    """Reads spark-submit's stdout (driver + kernel output) and timestamps interesting lines."""

    def __init__(self, proc: subprocess.Popen, t0: float, log_path: Path):
        self.t0 = t0
        self.ready_at: float | None = None
        self._log = open(log_path, "w")  # noqa: SIM115 - closed by the thread
        self._thread = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self._thread.start()

    def _run(self, proc):
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            now = time.monotonic() - self.t0
            self._log.write(f"{now:8.3f} {line}")
            if self.ready_at is None and READY_LINE in line:
                self.ready_at = now
        self._log.close()


def execute(kc: BlockingKernelClient, code: str, timeout: float = TIMEOUT) -> dict:
    """Runs code; returns status, result text, error, and stream text; waits for the reply."""
    mid = kc.execute(code, store_history=False)
    out = {"status": None, "result": "", "ename": None, "evalue": None, "stream": ""}
    deadline = time.monotonic() + timeout
    got_reply = got_idle = False
    while not (got_reply and got_idle):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{code!r}: no reply within {timeout}s")
        try:
            msg = kc.get_iopub_msg(timeout=min(remaining, 1.0))
        except Exception:  # queue.Empty
            msg = None
        if msg is not None and msg["parent_header"].get("msg_id") == mid:
            t, c = msg["msg_type"], msg["content"]
            if t == "execute_result":
                out["result"] = c["data"].get("text/plain", "")
            elif t == "stream":
                out["stream"] += c["text"]
            elif t == "error":
                out["ename"], out["evalue"] = c["ename"], c["evalue"]
            elif t == "status" and c["execution_state"] == "idle":
                got_idle = True
        if not got_reply:
            try:
                reply = kc.get_shell_msg(timeout=0.01)
            except Exception:
                reply = None
            if reply is not None and reply["parent_header"].get("msg_id") == mid:
                got_reply = True
                out["status"] = reply["content"]["status"]
    return out


def kernel_info(kc: BlockingKernelClient, timeout: float = TIMEOUT) -> float:
    """kernel_info_request until a reply; returns the monotonic time of the first reply. Then,
    like jupyter_client's wait_for_ready, makes sure IOPub is connected (a message arrives on
    it), so no cell output is lost to ZMQ's slow-joiner window."""
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        mid = kc.kernel_info()
        step = time.monotonic() + 5
        got = False
        while time.monotonic() < step and not got:
            try:
                reply = kc.get_shell_msg(timeout=0.5)
            except Exception:
                continue
            got = reply["parent_header"].get("msg_id") == mid
        if not got:
            continue
        first = first or time.monotonic()
        try:
            kc.get_iopub_msg(timeout=1)
        except Exception:
            continue  # IOPub not connected yet: ask again
        while True:  # drain the status messages of the kernel_info requests
            try:
                kc.get_iopub_msg(timeout=0.2)
            except Exception:
                break
        return first
    raise TimeoutError("no kernel_info_reply (with IOPub connected)")


def one_run(variant: str, env_paths: dict, launcher: str, work: Path, run_no: int) -> dict:
    py = env_paths["KL_PY_SPARK43"]
    home = env_paths["KL_SPARK_HOME43"]
    kid = str(uuid.uuid4())
    mode = variant.split("-")[1]
    rec = subprocess.Popen(
        [env_paths["KL_PY_EG"], str(RECEIVER), str(free_port()), kid, str(TIMEOUT)],
        stdout=subprocess.PIPE,
        stderr=open(work / f"{variant}-{run_no}.receiver.log", "wb"),
        text=True,
    )
    first = json.loads(rec.stdout.readline())
    gateway_opts = [
        "--RemoteProcessProxy.kernel-id", kid,
        "--RemoteProcessProxy.response-address", first["response_address"],
        "--RemoteProcessProxy.public-key", first["public_key"],
        "--RemoteProcessProxy.port-range", "0..0",
        "--RemoteProcessProxy.spark-context-initialization-mode", mode,
    ]  # fmt: skip
    if variant.startswith("kl-"):
        driver, primary, launch_opts = launcher, str(work / "primary.py"), ["--interpreter", py]
    else:
        eg_launcher = Path(env_paths["KL_EG_SDIST"]) / "etc/kernel-launchers/python/scripts/launch_ipykernel.py"
        driver, primary, launch_opts = py, str(eg_launcher), []
    cmd = [
        f"{home}/bin/spark-submit",
        "--master", "local[*]",
        "--name", kid,
        "--conf", "spark.driver.host=127.0.0.1",
        "--conf", "spark.driver.bindAddress=127.0.0.1",
        "--conf", f"spark.pyspark.python={py}",
        "--conf", "spark.ui.showConsoleProgress=false",
        "--conf", f"spark.pyspark.driver.python={driver}",
        primary, *launch_opts, *gateway_opts,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "KERNEL_", "JUPYTER"))}
    env.update({"SPARK_HOME": home, "SPARK_LOCAL_IP": "127.0.0.1", "KERNEL_ID": kid, "KERNEL_USERNAME": "bench"})
    r: dict = {"variant": variant, "run": run_no, "kernel_id": kid}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
        start_new_session=True, cwd=str(work),
    )  # fmt: skip
    out = Output(proc, t0, work / f"{variant}-{run_no}.log")
    kc = None
    try:
        line = rec.stdout.readline()
        info = json.loads(line) if line else {"error": "receiver exited"}
        if "connection_info" not in info:
            raise RuntimeError(f"no payload: {info}")
        r["payload"] = time.monotonic() - t0
        ci = dict(info["connection_info"])
        ci["ip"] = "127.0.0.1"
        kc = BlockingKernelClient()
        kc.load_connection_info({k: ci[k] for k in ci if k in (
            "ip", "transport", "shell_port", "iopub_port", "stdin_port", "control_port", "hb_port",
            "key", "signature_scheme")})  # fmt: skip
        # No heartbeat channel: with one, wait_for_ready takes a kernel whose heartbeat has not
        # answered within 1 s (a slow start under load) for a dead one.
        kc.start_channels(hb=False)
        r["kernel_info"] = kernel_info(kc) - t0
        t = time.monotonic()
        res = execute(kc, "1+1")
        r["one_plus_one_latency"] = time.monotonic() - t
        r["one_plus_one_ok"] = res["status"] == "ok" and res["result"] == "2"
        code = "spark.range(10).count()"
        if mode == "none":
            code = "from pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\n" + code
        res = execute(kc, code)
        r["count_ok"] = res["status"] == "ok" and res["result"] == "10"
        # A failed count has no "done" time (it would make EG's failure look fast).
        r["count_done" if r["count_ok"] else "count_failed_at"] = time.monotonic() - t0
        if not r["count_ok"]:
            r["count_error"] = f"{res['ename']}: {res['evalue']}"
            # What the names are now (EG's placeholders stay placeholders when its init fails).
            diag = execute(kc, "type(spark).__name__, type(sc).__name__, type(sqlContext).__name__", 60)
            r["names_after"] = diag["result"] or f"{diag['ename']}: {diag['evalue']}"
            if variant.startswith("eg-"):
                # EG keeps its init thread's exception on the placeholder (plain attribute).
                diag = execute(kc, "repr(spark._init_thread.exc)", 60)
                r["eg_init_error"] = diag["result"] or f"{diag['ename']}: {diag['evalue']}"
        r["spark_ready"] = out.ready_at if mode != "none" else (r["count_done"] if r["count_ok"] else None)
        t = time.monotonic()
        kc.shutdown()
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = None
        r["shutdown"] = time.monotonic() - t
        r["spark_submit_rc"] = rc
    except Exception as exc:  # noqa: BLE001 - recorded, the bench goes on
        r["error"] = repr(exc)
    finally:
        if kc is not None:
            kc.stop_channels()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait(timeout=30)
        if rec.poll() is None:
            rec.kill()
        rec.wait()
        time.sleep(0.5)
    return r


def median(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def fmt(values) -> str:
    vals = [v for v in values if isinstance(v, (int, float))]
    if not vals:
        return "n/a"
    return f"{statistics.median(vals):6.2f} ({min(vals):.2f}–{max(vals):.2f})"


def report(results: list[dict]) -> str:
    cols = [
        ("payload", "launch→payload"),
        ("kernel_info", "launch→kernel_info_reply"),
        ("one_plus_one_latency", "1+1 latency"),
        ("spark_ready", "launch→spark ready"),
        ("count_done", "launch→first count done"),
        ("shutdown", "shutdown_request→exit"),
    ]
    by = {v: [r for r in results if r["variant"] == v] for v in VARIANTS}
    lines = ["| variant | runs | " + " | ".join(c[1] for c in cols) + " | count ok | 1+1 ok |"]
    lines.append("|" + "---|" * (len(cols) + 4))
    for v, rs in by.items():
        cells = [fmt([r.get(k) for r in rs]) for k, _ in cols]
        ok = sum(bool(r.get("count_ok")) for r in rs)
        ok11 = sum(bool(r.get("one_plus_one_ok")) for r in rs)
        lines.append(f"| {v} | {len(rs)} | " + " | ".join(cells) + f" | {ok}/{len(rs)} | {ok11}/{len(rs)} |")
    lines.append("")
    lines.append("Median seconds (min–max), from the spark-submit start; 1+1 latency is send→reply.")

    def m(v, k):
        return median([r.get(k) for r in by[v]])

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else "n/a"

    lines.append("")
    lines.append("Ratios of medians:")
    for k, label in (("kernel_info", "launch→kernel_info"), ("payload", "launch→payload"), ("one_plus_one_latency", "1+1 latency")):
        lines.append(f"  {label:22s} kl-lazy/eg-lazy = {ratio(m('kl-lazy', k), m('eg-lazy', k))}"
                     f"   kl-eager/kl-lazy = {ratio(m('kl-eager', k), m('kl-lazy', k))}"
                     f"   kl-lazy/kl-none = {ratio(m('kl-lazy', k), m('kl-none', k))}")  # fmt: skip
    for k, label in (("spark_ready", "spark ready"), ("count_done", "first count done")):
        lines.append(f"  {label:22s} kl-lazy/kl-none = {ratio(m('kl-lazy', k), m('kl-none', k))}"
                     f"   kl-eager/kl-none = {ratio(m('kl-eager', k), m('kl-none', k))}"
                     f"   kl-lazy/eg-lazy = {ratio(m('kl-lazy', k), m('eg-lazy', k))}")  # fmt: skip
    eg = by["eg-lazy"]
    if eg:
        lines.append("")
        lines.append("EG 3.3.0 launch_ipykernel.py, lazy, pyspark 4.3.0:")
        for r in eg:
            at = r.get("count_failed_at")
            at = f" after {at:.2f} s" if at else ""
            lines.append(f"  run {r['run']}: count_ok={r.get('count_ok')}{at}: {r.get('count_error') or r.get('error')}")
            names = " ".join(str(r.get("names_after")).split())
            lines.append(f"         names after the failure: {names}; EG init thread exception: {r.get('eg_init_error')}")
    errs = [r for r in results if r.get("error")]
    for r in errs:
        lines.append(f"ERROR {r['variant']} run {r['run']}: {r['error']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--launcher", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    env_paths = load_env()
    launcher = str(Path(args.launcher).resolve())
    work = Path(tempfile.mkdtemp(prefix="kl-spark-bench-"))
    (work / "primary.py").write_text('raise SystemExit("primary resource only")\n')
    out_path = Path(args.out) if args.out else work / "results.jsonl"
    import pyspark

    print(f"pyspark {pyspark.__version__}, launcher {launcher}, {args.runs} runs per variant, work dir {work}", flush=True)
    results = []
    with open(out_path, "w") as f:
        for run_no in range(1, args.runs + 1):
            for variant in VARIANTS:
                r = one_run(variant, env_paths, launcher, work, run_no)
                results.append(r)
                f.write(json.dumps(r) + "\n")
                f.flush()
                short = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items() if k != "kernel_id"}
                print(json.dumps(short), flush=True)
    print()
    print(report(results))
    print(f"\nraw results: {out_path}")
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
