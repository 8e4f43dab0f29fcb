"""gateway-lite vs Enterprise Gateway 3.3.0, same run, same machine, SAME kernelspec.

The kernelspec is EG-style (metadata.process_proxy = DistributedProcessProxy, argv =
kernel-launcher with {kernel_id} {response_address} {public_key} {port_range}, then
`-- KERNEL_PYTHON -m ipykernel_launcher -f {connection_file}`). EG runs it with
EG_REMOTE_HOSTS=localhost (local launch, no ssh, as bench/eg_bench.py does); gateway-lite is
pointed at the same directory with --kernelspec-dir and fills the same placeholders.
EG is run twice: default EG_POLL_INTERVAL (0.5 s) and EG_POLL_INTERVAL=0.05.

What is measured, per gateway, per rep:
  launch     LAUNCHES sequential single launches (after one discarded warm-up launch):
             POST /api/kernels -> 201, and -> kernel_info_reply over the kernel WebSocket
             (POST + WS connect + kernel_info_request until its reply).
  201-payload  time from the payload's arrival at the gateway to the 201 at the client.
             Method: kernel-launcher logs `[<UTC ms timestamp> kernel-launcher PID INFO]
             connection payload delivered` right after write_all + shutdown(WR) of the payload
             socket returned (launcher/src/report.rs, supervise.rs), i.e. once the payload is in
             the gateway's socket. Its stderr lands in gateway-lite's log (target "kernel") and
             in EG's per-kernel log EG_KERNEL_LOG_DIR/kernel-<id>.log. The client records
             time.time() when the 201 response has been read. Same host, same clock:
             delta = t_201 - t_delivered. The launcher's timestamp is truncated to the
             millisecond, so the delta is biased up by 0..1 ms (it never flatters the gateway).
  execute    one kernel; its WebSocket (legacy JSON text frames, as Jupyter Server's gateway
             client and JupyterLab use); WARMUP then N sequential `pass` executes; per execute
             the time from send to execute_reply and to the iopub idle status (the next
             execute is sent once both arrived). p50, p99, and executes/s = N / loop time.
  floor      the SAME kernel, right after, driven directly over ZMQ (pyzmq + jupyter_client's
             Session for signing; shell DEALER + iopub SUB), same loop and N. The connection
             info comes from the kernel's own connection file: the path after `-f` in the
             ipykernel process's /proc/PID/cmdline (the process carrying KERNEL_ID=<id> in its
             environment). The "overhead" row is p50(WebSocket) - p50(floor) for that gateway.
  storms     STORMS (20, 100) concurrent POST /api/kernels from threads released by a barrier:
             failures (non-201 or exception), wall time until every POST answered; then every
             201'd kernel must answer kernel_info over its WebSocket (all at once, 120 s each):
             those that do not count as "no kernel_info on 1st WS" (a 201 is not a working
             kernel); they get a second, fresh WebSocket (the kernel has had its time to start):
             "nor on a 2nd WS" are dead kernels, the difference was lost by the gateway; with the number of "Address already in use" lines the kernels logged
             meanwhile (a kernel dies when another launcher handed the same port to its kernel
             first) and the wall time until all answered; then DELETE
             all at once (one thread per kernel, its connection open before a barrier releases
             them all; first the same for as many unknown ids, whose 404s are the client's own
             floor): time from the release until every DELETE answered and until every process of
             those kernels (found via KERNEL_ID in /proc/*/environ plus descendants, taken before
             the DELETEs) is gone (30 s grace); "left" counts survivors, kernels still answering
             GET /api/kernels/<id> or listed by GET /api/kernels (EG runs with
             EG_LIST_KERNELS=True for that), and non-204 DELETEs.
  RSS        VmRSS of the gateway process only (gateway-lite's pid; EG's python pid):
             idle (1 s after /api first answered, before any kernel), with 1 kernel (the
             execute kernel, its WebSocket open, after the executes), with 20 kernels (after
             the 20-storm, 2 s settle, no WebSockets).
All gateways get the same KERNEL_LAUNCH_TIMEOUT (request env, LAUNCH_TIMEOUT s).

Cleanup: gateways run in their own sessions with GATEWAY_BENCH_RUN=<uuid> in their environment,
which every launcher and kernel inherits; on exit (normal, exception, SIGINT/SIGTERM) the
gateway groups are killed and every process carrying the marker is SIGTERMed, then SIGKILLed.

Usage (from bench/gateway.sh, which puts tests/ on PYTHONPATH for the shared helpers, tests/support):
  gateway_bench.py GATEWAY_LITE KERNEL_LAUNCHER KERNEL_PYTHON [REPS]
Environment knobs: GATEWAY_BENCH_JSON (raw results, default /tmp/gateway-bench-<time>.json),
GATEWAY_BENCH_N (500), GATEWAY_BENCH_WARMUP (50), GATEWAY_BENCH_LAUNCHES (5),
GATEWAY_BENCH_STORMS ("20,100"), GATEWAY_BENCH_EG_POLLS ("default,0.05"; "" = no EG),
GATEWAY_BENCH_LAUNCH_TIMEOUT (300), GATEWAY_BENCH_POOL (20: a gateway-lite with --pool kl=20 is
measured too, and every gateway runs a storm of 20 POSTs that each execute a cell; 0 = none;
method in bench/gateway_pool_bench.py).
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests
import zmq
from jupyter_client.session import Session

import gateway_pool_bench as pool_bench

from support.kernels import (
    JupyterRest,
    _all_pids,
    _cmdline,
    _environ,
    descendants,
    free_port,
    kill_tree,
    wait_gone,
    wait_http_ok,
)

N = int(os.environ.get("GATEWAY_BENCH_N", "500"))
WARMUP = int(os.environ.get("GATEWAY_BENCH_WARMUP", "50"))
LAUNCHES = int(os.environ.get("GATEWAY_BENCH_LAUNCHES", "5"))
STORMS = [int(s) for s in os.environ.get("GATEWAY_BENCH_STORMS", "20,100").split(",") if s.strip()]
EG_POLLS = [p.strip() for p in os.environ.get("GATEWAY_BENCH_EG_POLLS", "default,0.05").split(",") if p.strip()]
LAUNCH_TIMEOUT = os.environ.get("GATEWAY_BENCH_LAUNCH_TIMEOUT", "300")
HTTP_TIMEOUT = float(LAUNCH_TIMEOUT) + 60
STORM_INFO_TIMEOUT = 120
SPEC = "kl"
POOL = int(os.environ.get("GATEWAY_BENCH_POOL", "20"))
POOL_LABEL = "gateway-lite pool"

MARKER = uuid.uuid4().hex
# KERNEL_* request env reaches the kernel's environment through both gateways (EG does not pass
# its own environment on to kernels), so it marks every launcher and kernel of this run.
KENV = {"KERNEL_USERNAME": "bench", "KERNEL_LAUNCH_TIMEOUT": LAUNCH_TIMEOUT, "KERNEL_BENCH_RUN": MARKER}
# A request a pooled kernel can serve (no KERNEL_* that changes the launch); the pooled gateway's
# kernels carry the marker through --kernel-env GATEWAY_BENCH_RUN instead.
KENV_POOLED = {"KERNEL_USERNAME": "bench", "KERNEL_LAUNCH_TIMEOUT": LAUNCH_TIMEOUT}
_gateways: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[gateway-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- cleanup


def marked_pids() -> list[int]:
    me = os.getpid()
    v = MARKER.encode()
    out = []
    for p in _all_pids():
        env = _environ(p)
        if p != me and v in (env.get(b"GATEWAY_BENCH_RUN"), env.get(b"KERNEL_BENCH_RUN")):
            out.append(p)
    return out


def cleanup() -> None:
    for gw in _gateways:
        kill_tree(gw, grace=15)
    pids = marked_pids()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = marked_pids()
        if not pids:
            break
    if pids:
        log(f"WARNING: processes left after cleanup: {pids}")


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# ----------------------------------------------------------------------------- helpers


def vmrss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]  # nearest rank


def procs_by_kernel(ids: set[str]) -> dict[str, set]:
    """Every live process of each kernel id: KERNEL_ID=<id> in its environment, plus descendants."""
    roots: dict[str, list[int]] = {}
    for p in _all_pids():
        kid = _environ(p).get(b"KERNEL_ID")
        if kid is not None and kid.decode() in ids:
            roots.setdefault(kid.decode(), []).append(p)
    return {k: descendants(v, include_roots=True) for k, v in roots.items()}


def connection_file_of(kid: str, timeout: float = 30) -> dict:
    """The kernel's own connection file (path after -f in the ipykernel command line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs_by_kernel({kid}).get(kid, ()):
            argv = _cmdline(p.pid).split()
            if "ipykernel_launcher" in p.cmdline and "-f" in argv:
                path = argv[argv.index("-f") + 1]
                try:
                    return json.loads(Path(path).read_text())
                except (OSError, ValueError):
                    pass
        time.sleep(0.1)
    raise RuntimeError(f"no connection file found for kernel {kid}")


LAUNCHER_LINE = re.compile(r"\[(\S+) kernel-launcher (\d+) \w+\] (.*)")
STARTING = re.compile(r"kernel-launcher \S+ starting kernel (\S+) \(pid")


def delivered_times(text: str) -> dict[str, float]:
    """kernel id -> epoch seconds of the launcher's `connection payload delivered` log line."""
    current: dict[str, str] = {}  # launcher pid -> kernel id
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = LAUNCHER_LINE.search(line)
        if not m:
            continue
        ts, pid, rest = m.groups()
        s = STARTING.match(rest)
        if s:
            current[pid] = s.group(1)
        elif rest.startswith("connection payload delivered") and pid in current:
            out[current[pid]] = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return out


# ----------------------------------------------------------------------------- gateways


class Gateway:
    label: str
    proc: subprocess.Popen
    base: str

    def delivered(self, kid: str) -> float | None:
        raise NotImplementedError

    def all_logs(self) -> str:
        raise NotImplementedError

    token: str | None = None

    def rest(self) -> JupyterRest:
        return JupyterRest(self.base, self.token)

    def stop(self) -> None:
        kill_tree(self.proc, grace=30)


class GatewayLite(Gateway):
    def __init__(self, binary: str, launcher: str, specs: Path, work: Path, extra: tuple[str, ...] = (),
                 label: str = "gateway-lite"):
        self.label = label
        self.log = work / "gateway-lite.log"
        # A token, as every gateway-lite has one (through its environment, not its argv).
        self.token = uuid.uuid4().hex
        env = dict(os.environ, GATEWAY_BENCH_RUN=MARKER, JUPYTER_PATH="", JUPYTER_DATA_DIR=str(work / "data"),
                   JUPYTER_RUNTIME_DIR=str(work / "rt"), GATEWAY_LITE_AUTH_TOKEN=self.token)
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--kernelspec-dir", str(specs), "--launcher", launcher,
             "--default-kernel-name", SPEC, *extra],
            stdout=subprocess.PIPE, stderr=open(self.log, "w"), env=env, text=True, start_new_session=True)
        _gateways.append(self.proc)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"gateway-lite did not start: {line!r}\n{self.log.read_text()[-3000:]}")
        self.base = line.split("listening on", 1)[1].strip().partition("/?")[0].rstrip("/")
        wait_http_ok(f"{self.base}/api", self.proc, 60, token=self.token)

    def delivered(self, kid: str) -> float | None:
        return delivered_times(self.all_logs()).get(kid)

    def all_logs(self) -> str:
        return self.log.read_text(errors="replace")


class EnterpriseGateway(Gateway):
    def __init__(self, poll: str, specs: Path, work: Path):
        self.label = f"EG poll {'0.5' if poll == 'default' else poll}"
        self.kernel_logs = work / "kernel-logs"
        self.kernel_logs.mkdir()
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = dict(os.environ, GATEWAY_BENCH_RUN=MARKER, JUPYTER_PATH=str(specs.parent),
                   JUPYTER_RUNTIME_DIR=str(work / "rt"), JUPYTER_DATA_DIR=str(work / "data"),
                   EG_RESPONSE_IP="127.0.0.1", EG_RESPONSE_PORT=str(free_port()), EG_REMOTE_HOSTS="localhost",
                   EG_LIST_KERNELS="True",
                   EG_KERNEL_LOG_DIR=str(self.kernel_logs))
        if poll != "default":
            env["EG_POLL_INTERVAL"] = poll
        eg_bin = str(Path(sys.executable).parent / "jupyter-enterprisegateway")
        self.proc = subprocess.Popen(
            [eg_bin, "--EnterpriseGatewayApp.ip=127.0.0.1", f"--EnterpriseGatewayApp.port={port}"],
            env=env, stdout=open(work / "eg.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        _gateways.append(self.proc)
        wait_http_ok(f"{self.base}/api", self.proc, 120)

    def delivered(self, kid: str) -> float | None:
        f = self.kernel_logs / f"kernel-{kid}.log"
        try:
            return delivered_times(f.read_text(errors="replace")).get(kid)
        except OSError:
            return None

    def all_logs(self) -> str:
        return "".join(f.read_text(errors="replace") for f in self.kernel_logs.iterdir())


# ----------------------------------------------------------------------------- measurements


def start(rest: JupyterRest) -> tuple[str, float, float]:
    """POST; returns (kernel id, monotonic seconds to 201, epoch time of the 201)."""
    t0 = time.monotonic()
    r = requests.post(f"{rest.base_url}/api/kernels", json={"name": SPEC, "env": KENV}, headers=rest.headers,
                      timeout=HTTP_TIMEOUT)
    t1, wall = time.monotonic(), time.time()
    if r.status_code != 201:
        raise RuntimeError(f"POST /api/kernels: HTTP {r.status_code}: {r.text[:2000]}")
    return r.json()["id"], t1 - t0, wall


def delete_and_wait(rest: JupyterRest, kid: str) -> None:
    procs = procs_by_kernel({kid}).get(kid, set())
    r = rest.delete(kid)
    if r.status_code != 204:
        raise RuntimeError(f"DELETE {kid}: HTTP {r.status_code}: {r.text[:500]}")
    left = wait_gone(procs)
    if left:
        raise RuntimeError(f"kernel {kid}: processes left after DELETE: {left}")


def launches(gw: Gateway) -> dict:
    rest = gw.rest()
    out = {"post_201_ms": [], "kernel_info_ms": [], "payload_to_201_ms": []}
    for i in range(LAUNCHES + 1):  # the first launch warms the gateway up and is discarded
        t0 = time.monotonic()
        kid, t201, wall201 = start(rest)
        ch = rest.channels(kid)
        ch.kernel_info()
        tinfo = time.monotonic() - t0
        ch.close()
        delivered = None
        for _ in range(50):  # the launcher's log line may trail the 201 by a few ms
            delivered = gw.delivered(kid)
            if delivered is not None:
                break
            time.sleep(0.02)
        if i > 0:
            out["post_201_ms"].append(t201 * 1000)
            out["kernel_info_ms"].append(tinfo * 1000)
            if delivered is None:
                log(f"{gw.label}: no 'connection payload delivered' line for {kid}")
            else:
                out["payload_to_201_ms"].append((wall201 - delivered) * 1000)
        delete_and_wait(rest, kid)
    return out


def ws_executes(ch) -> dict:
    def one() -> tuple[float, float]:
        t0 = time.perf_counter()
        mid = ch.submit("pass")
        t_reply = t_idle = None
        while t_reply is None or t_idle is None:
            m = json.loads(ch.ws.recv())
            if m.get("parent_header", {}).get("msg_id") != mid:
                continue
            mt = m.get("msg_type")
            if mt == "execute_reply":
                t_reply = time.perf_counter() - t0
            elif mt == "status" and m.get("content", {}).get("execution_state") == "idle":
                t_idle = time.perf_counter() - t0
        return t_reply, t_idle

    ch.ws.settimeout(60)
    return _loop(one)


def _loop(one) -> dict:
    for _ in range(WARMUP):
        one()
    reply, idle = [], []
    t0 = time.perf_counter()
    for _ in range(N):
        r, i = one()
        reply.append(r * 1000)
        idle.append(i * 1000)
    total = time.perf_counter() - t0
    return {"reply_ms": reply, "idle_ms": idle, "per_s": N / total}


def zmq_executes(info: dict) -> dict:
    """The raw ZMQ floor. A connection file with `curve_publickey` belongs to a kernel bound as
    a CurveZMQ server: the sockets are then CURVE clients (that server key, a fresh key pair of
    their own), as a gateway's are; the result says which (`curve`)."""
    ctx = zmq.Context()
    session = Session(key=info["key"].encode(), signature_scheme=info.get("signature_scheme", "hmac-sha256"),
                      username="bench")
    ip = info["ip"] if info["ip"] not in ("0.0.0.0", "") else "127.0.0.1"
    curve = bool(info.get("curve_publickey"))

    def socket(kind: int) -> zmq.Socket:
        s = ctx.socket(kind)
        s.linger = 0
        if curve:
            s.curve_serverkey = info["curve_publickey"].encode()
            s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
        return s

    shell = socket(zmq.DEALER)
    shell.connect(f"{info['transport']}://{ip}:{info['shell_port']}")
    iopub = socket(zmq.SUB)
    iopub.setsockopt(zmq.SUBSCRIBE, b"")
    iopub.connect(f"{info['transport']}://{ip}:{info['iopub_port']}")
    poller = zmq.Poller()
    poller.register(shell, zmq.POLLIN)
    poller.register(iopub, zmq.POLLIN)
    content = {"code": "pass", "silent": False, "store_history": False, "user_expressions": {},
               "allow_stdin": False, "stop_on_error": False}

    def one() -> tuple[float, float]:
        t0 = time.perf_counter()
        mid = session.send(shell, "execute_request", content)["header"]["msg_id"]
        t_reply = t_idle = None
        deadline = time.monotonic() + 60
        while t_reply is None or t_idle is None:
            if time.monotonic() > deadline:
                raise TimeoutError("raw ZMQ execute: no reply/idle within 60 s")
            for sock, _ in poller.poll(1000):
                _, msg = session.recv(sock, mode=zmq.NOBLOCK)
                if msg is None or msg["parent_header"].get("msg_id") != mid:
                    continue
                if sock is shell and msg["msg_type"] == "execute_reply":
                    t_reply = time.perf_counter() - t0
                elif sock is iopub and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    t_idle = time.perf_counter() - t0
        return t_reply, t_idle

    try:
        # The SUB socket misses messages until its subscription has reached the kernel: send
        # kernel_info_requests until their busy/idle shows up on iopub.
        deadline = time.monotonic() + 30
        subscribed = False
        while not subscribed:
            if time.monotonic() > deadline:
                raise TimeoutError("raw ZMQ: no iopub traffic within 30 s")
            session.send(shell, "kernel_info_request", {})
            for sock, _ in poller.poll(200):
                _, msg = session.recv(sock, mode=zmq.NOBLOCK)
                subscribed = subscribed or (sock is iopub and msg is not None and msg["msg_type"] == "status")
        time.sleep(0.2)
        while poller.poll(100):  # drain the replies to the probes
            for sock, _ in poller.poll(0):
                session.recv(sock, mode=zmq.NOBLOCK)
        return {**_loop(one), "curve": curve}
    finally:
        shell.close()
        iopub.close()
        ctx.term()


def listed_ids(rest: JupyterRest) -> set[str]:
    try:
        r = requests.get(f"{rest.base_url}/api/kernels", headers=rest.headers, timeout=30)
        if r.status_code == 200:
            return {k["id"] for k in r.json()}
        log(f"GET /api/kernels: HTTP {r.status_code}: {r.text[:300]}")
    except Exception as e:  # noqa: BLE001
        log(f"GET /api/kernels: {e!r}")
    return set()


def still_there(rest: JupyterRest, kid: str) -> bool:
    try:
        return requests.get(f"{rest.base_url}/api/kernels/{kid}", headers=rest.headers, timeout=30).status_code != 404
    except Exception:  # noqa: BLE001 - a gateway that does not answer has not shown the kernel is gone
        return True


def parallel(fn, items) -> list:
    out: list = [None] * len(items)

    def run(i, item):
        try:
            out[i] = fn(item)
        except Exception as e:  # noqa: BLE001 - a failure to count, not to raise
            out[i] = e

    threads = [threading.Thread(target=run, args=(i, it)) for i, it in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def delete_at_once(rest: JupyterRest, ids: list[str]) -> dict:
    """DELETE every id at once: one thread per id opens its HTTP connection first, then all are
    released by one barrier (its release is t0) and each sends its DELETE and reads the answer.
    Connection set-up and thread start-up are thus outside the measured time, for every gateway
    alike; what is measured is the gateway answering len(ids) DELETEs that arrive together.
    Returns t0, the statuses (None for an exception) and wall_s = last answer - t0."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(rest.base_url)
    base_path = url.path.rstrip("/")
    t0_box: list[float] = []
    barrier = threading.Barrier(len(ids), action=lambda: t0_box.append(time.monotonic()))

    def one(kid):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        try:
            conn.connect()
            barrier.wait()
            conn.request("DELETE", f"{base_path}/api/kernels/{kid}", headers=rest.headers)
            resp = conn.getresponse()
            resp.read()
            return (resp.status, time.monotonic())
        finally:
            conn.close()

    results = parallel(one, ids)
    t0 = t0_box[0] if t0_box else time.monotonic()
    done = [r[1] for r in results if isinstance(r, tuple)]
    return {
        "t0": t0,
        "statuses": [r[0] if isinstance(r, tuple) else None for r in results],
        "wall_s": (max(done) - t0) if done else float("nan"),
        "answered_s": sorted(round(t - t0, 4) for t in done),
    }


def storm(gw: Gateway, n: int, rss_after: bool) -> dict:
    rest = gw.rest()
    barrier = threading.Barrier(n)
    eaddrinuse_before = gw.all_logs().count("Address already in use")

    def post(_):
        barrier.wait()
        try:
            r = requests.post(f"{rest.base_url}/api/kernels", json={"name": SPEC, "env": KENV}, headers=rest.headers,
                      timeout=HTTP_TIMEOUT)
            return (r.status_code, r.json().get("id") if r.status_code == 201 else r.text[:300], time.monotonic())
        except Exception as e:  # noqa: BLE001 - a failure to count, not to raise
            return (None, repr(e)[:300], time.monotonic())

    t0 = time.monotonic()
    results = parallel(post, list(range(n)))
    ok = [r[1] for r in results if r[0] == 201]
    failures = [f"{r[0]}: {r[1]}" for r in results if r[0] != 201]
    out = {"n": n, "failures": len(failures), "failure_samples": failures[:5], "wall_s": max(r[2] for r in results) - t0}
    if failures:
        log(f"{gw.label} storm {n}: {len(failures)} failed POSTs, e.g. {failures[:2]}")

    # A 201 is not a working kernel: every kernel must answer kernel_info over its WebSocket.
    def info(kid, timeout=STORM_INFO_TIMEOUT):
        ch = rest.channels(kid)
        try:
            ch.kernel_info(timeout=timeout)
            return time.monotonic()
        finally:
            ch.close()

    answered = parallel(info, ok)
    dead = [f"{k}: {a!r}"[:300] for k, a in zip(ok, answered) if not isinstance(a, float)]
    times = [a for a in answered if isinstance(a, float)]
    out["unanswered"] = len(dead)
    out["unanswered_samples"] = dead[:5]
    out["wall_info_s"] = (max(times) - t0) if times else float("nan")
    # Those that did not answer get a second, fresh WebSocket: the kernel is up by now, so what
    # still does not answer is a dead kernel; what answers now was lost by the gateway's bridge.
    retry = [k for k, a in zip(ok, answered) if not isinstance(a, float)]
    again = parallel(lambda k: info(k, 60), retry)
    out["unanswered_second_ws"] = sum(1 for a in again if not isinstance(a, float))
    out["eaddrinuse_in_logs"] = gw.all_logs().count("Address already in use") - eaddrinuse_before
    if dead:
        log(f"{gw.label} storm {n}: {len(dead)} kernels did not answer kernel_info within {STORM_INFO_TIMEOUT}s "
            f"({out['eaddrinuse_in_logs']} 'Address already in use' in the kernel logs)")
    if rss_after:
        time.sleep(2)
        out["gateway_rss_mb"] = vmrss_mb(gw.proc.pid)

    # Whatever the gateway lists counts too (a failed POST may still have left a kernel).
    ids = sorted(set(ok) | listed_ids(rest))
    procs = set().union(*procs_by_kernel(set(ids)).values()) if ids else set()
    # The client's own floor first: as many DELETEs of ids no gateway knows (404), sent the same way.
    floor = delete_at_once(rest, [str(uuid.uuid4()) for _ in ids])
    out["delete_floor_s"] = floor["wall_s"]
    out["delete_floor_not_404"] = sum(1 for s in floor["statuses"] if s != 404)
    deleted = delete_at_once(rest, ids)
    t0 = deleted["t0"]
    out["delete_s"] = deleted["wall_s"]
    out["delete_answered_s"] = deleted["answered_s"]
    out["delete_failures"] = sum(1 for s in deleted["statuses"] if s != 204)
    left = wait_gone(procs, timeout=30)
    out["delete_gone_s"] = time.monotonic() - t0
    still = {k for k in ids if still_there(rest, k)} | (listed_ids(rest) & set(ids))
    out["left_processes"] = len(left)
    out["left_listed"] = len(still)
    if left or still or out["delete_failures"]:
        log(f"{gw.label} storm {n}: after DELETE {out['delete_failures']} non-204, {len(still)} kernels still "
            f"there, {len(left)} processes alive (killed)")
        for p in left:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except OSError:
                pass
    return out


def run_gateway(gw: Gateway, res: dict) -> None:
    """Fills `res` as it goes, so a gateway that fails half-way still reports what it did."""
    res["gateway"] = gw.label
    time.sleep(1)
    res["rss_idle_mb"] = vmrss_mb(gw.proc.pid)
    log(f"{gw.label}: launches")
    res["launch"] = launches(gw)
    log(f"{gw.label}: executes")
    rest = gw.rest()
    kid, _, _ = start(rest)
    ch = rest.channels(kid)
    try:
        ch.kernel_info()
        res["ws"] = ws_executes(ch)
        res["rss_1_kernel_mb"] = vmrss_mb(gw.proc.pid)
        res["zmq"] = zmq_executes(connection_file_of(kid))
    finally:
        ch.close()
    delete_and_wait(rest, kid)
    res["storms"] = {}
    for n in STORMS:
        log(f"{gw.label}: storm of {n}")
        res["storms"][str(n)] = storm(gw, n, rss_after=(n == 20))
    if POOL:
        log(f"{gw.label}: storm of {POOL} with a cell each")
        res["storm_exec"] = pool_bench.storm_execute(gw, SPEC, POOL, KENV, log)


def run_pool(gw: Gateway, res: dict) -> None:
    """The pooled gateway: pooled launches and the storm with a cell each (gateway_pool_bench)."""
    res["gateway"] = gw.label
    log(f"{gw.label}: pooled launches")
    res["pool_launch"] = pool_bench.pooled_launches(gw, SPEC, POOL, KENV_POOLED, log)
    log(f"{gw.label}: storm of {POOL} with a cell each")
    res["storm_exec"] = pool_bench.storm_execute(gw, SPEC, POOL, KENV_POOLED, log, pool_size=POOL)


# ----------------------------------------------------------------------------- report


def summarize(r: dict) -> dict:
    """One rep of one gateway -> flat row values (only what was measured before any failure)."""
    nan = float("nan")
    s: dict = {}
    if "rss_idle_mb" in r:
        s["rss_idle"] = r["rss_idle_mb"]
    if "rss_1_kernel_mb" in r:
        s["rss_1"] = r["rss_1_kernel_mb"]
    if "launch" in r:
        la = r["launch"]
        s["post_201_ms"] = statistics.median(la["post_201_ms"])
        s["kernel_info_ms"] = statistics.median(la["kernel_info_ms"])
        s["payload_to_201_ms"] = statistics.median(la["payload_to_201_ms"]) if la["payload_to_201_ms"] else nan
    for key, src in (("ws", "ws"), ("zmq", "zmq")):
        if src in r:
            x = r[src]
            s[f"{key}_p50"], s[f"{key}_p99"] = pct(x["reply_ms"], 50), pct(x["reply_ms"], 99)
            s[f"{key}_idle_p50"], s[f"{key}_idle_p99"] = pct(x["idle_ms"], 50), pct(x["idle_ms"], 99)
            s[f"{key}_per_s"] = x["per_s"]
    if "ws" in r and "zmq" in r:
        s["overhead_p50"] = s["ws_p50"] - s["zmq_p50"]
    for n, st in r.get("storms", {}).items():
        s[f"storm{n}_fail"] = st["failures"]
        s[f"storm{n}_dead"] = st["unanswered"]
        s[f"storm{n}_dead2"] = st["unanswered_second_ws"]
        s[f"storm{n}_eaddr"] = st["eaddrinuse_in_logs"]
        s[f"storm{n}_wall"] = st["wall_s"]
        s[f"storm{n}_info"] = st["wall_info_s"]
        s[f"storm{n}_del"] = st["delete_s"]
        s[f"storm{n}_delfloor"] = st["delete_floor_s"]
        s[f"storm{n}_gone"] = st["delete_gone_s"]
        s[f"storm{n}_left"] = st["left_processes"] + st["left_listed"] + st["delete_failures"]
        if "gateway_rss_mb" in st:
            s["rss_20"] = st["gateway_rss_mb"]
    return s


def fmt(v: float, spec: str) -> str:
    return "n/a" if v is None or v != v else format(v, spec)


def report(all_reps: list[dict[str, dict]]) -> dict[str, dict]:
    labels = [lab for lab in all_reps[0] if lab != POOL_LABEL]
    med: dict[str, dict] = {}
    for lab in labels:
        rows = [summarize(rep[lab]) for rep in all_reps if lab in rep]
        keys = {k for r in rows for k in r}
        med[lab] = {k: statistics.median([r[k] for r in rows if k in r]) for k in keys}
    spec_rows = [
        ("POST -> 201 (ms)", "post_201_ms", ".1f", ""),
        ("POST -> kernel_info_reply (ms)", "kernel_info_ms", ".1f", ""),
        ("payload arrival -> 201 (ms)", "payload_to_201_ms", ".1f", "<= 20"),
        ("execute via WS p50 (ms)", "ws_p50", ".2f", ""),
        ("execute via WS p99 (ms)", "ws_p99", ".2f", ""),
        ("execute via WS per second", "ws_per_s", ".0f", ""),
        ("  ... -> idle p50 (ms)", "ws_idle_p50", ".2f", ""),
        ("  ... -> idle p99 (ms)", "ws_idle_p99", ".2f", ""),
        ("raw ZMQ floor p50 (ms)", "zmq_p50", ".2f", ""),
        ("raw ZMQ floor p99 (ms)", "zmq_p99", ".2f", ""),
        ("raw ZMQ floor per second", "zmq_per_s", ".0f", ""),
        ("  ... -> idle p50 (ms)", "zmq_idle_p50", ".2f", ""),
        ("WS p50 - floor p50 (ms)", "overhead_p50", ".2f", "<= 0.5"),
    ]
    for n in STORMS:
        spec_rows += [
            (f"storm {n}: failed POSTs (non-201)", f"storm{n}_fail", ".0f", "0"),
            (f"storm {n}: no kernel_info on 1st WS", f"storm{n}_dead", ".0f", "0"),
            (f"storm {n}: ... nor on a 2nd WS (dead)", f"storm{n}_dead2", ".0f", "0"),
            (f"storm {n}: EADDRINUSE in kernel logs", f"storm{n}_eaddr", ".0f", ""),
            (f"storm {n}: wall until all 201 (s)", f"storm{n}_wall", ".2f", ""),
            (f"storm {n}: wall until all kernel_info (s)", f"storm{n}_info", ".2f", ""),
            (f"storm {n}: DELETE unknown ids -> 404s (client floor, s)", f"storm{n}_delfloor", ".2f", ""),
            (f"storm {n}: DELETE all -> 204s (s)", f"storm{n}_del", ".2f", ""),
            (f"storm {n}: DELETE all -> procs gone (s)", f"storm{n}_gone", ".2f", ""),
            (f"storm {n}: left after DELETE", f"storm{n}_left", ".0f", "0"),
        ]
    spec_rows += [
        ("gateway RSS idle (MB)", "rss_idle", ".1f", ""),
        ("gateway RSS 1 kernel (MB)", "rss_1", ".1f", ""),
        ("gateway RSS 20 kernels (MB)", "rss_20", ".1f", "<= 20"),
    ]
    base = labels[0]
    head = f"{'':44}" + "".join(f"{lab:>14}" for lab in labels) + "".join(f"{lab.replace('EG poll ', 'EG/gl '):>12}" for lab in labels[1:]) + f"{'target':>9}"
    print(head)
    print("-" * len(head))
    for title, key, spec, target in spec_rows:
        vals = [med[lab].get(key) for lab in labels]
        line = f"{title:44}" + "".join(f"{fmt(v, spec):>14}" for v in vals)
        for v in vals[1:]:
            b = vals[0]
            ratio = (v / b) if (v is not None and b not in (None, 0) and v == v and b == b) else None
            line += f"{(fmt(ratio, '.2f') + 'x') if ratio is not None else 'n/a':>12}"
        print(line + f"{target:>9}")
    # The teardown figure on one line per storm: all DELETEs answered, then all processes gone.
    for n in STORMS:
        parts = []
        for lab in labels:
            d, g = med[lab].get(f"storm{n}_del"), med[lab].get(f"storm{n}_gone")
            f = med[lab].get(f"storm{n}_delfloor")
            parts.append(f"{lab} {fmt(d, '.2f')} s (gone {fmt(g, '.2f')} s; client floor {fmt(f, '.2f')} s)")
        b, others = med[base].get(f"storm{n}_del"), [med[lab].get(f"storm{n}_del") for lab in labels[1:]]
        ratios = [f"{fmt(v / b, '.2f')}x" for v in others if v is not None and b and v == v and b == b]
        print(f"DELETE{n}: " + "; ".join(parts) + (f"; EG/gl {', '.join(ratios)}" if ratios else ""))
    for rep_i, rep in enumerate(all_reps):
        for lab, r in rep.items():
            if "error" in r:
                print(f"NOTE rep {rep_i + 1}: {lab} failed: {r['error'][:500]}")
    return med


def main() -> None:
    gateway_lite, launcher, python = sys.argv[1:4]
    reps = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    atexit.register(cleanup)
    root = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    specs = root / "kernels"
    opts = ["--RemoteProcessProxy.kernel-id", "{kernel_id}",
            "--RemoteProcessProxy.response-address", "{response_address}",
            "--RemoteProcessProxy.public-key", "{public_key}",
            "--RemoteProcessProxy.port-range", "{port_range}"]
    (specs / SPEC).mkdir(parents=True)
    (specs / SPEC / "kernel.json").write_text(json.dumps({
        "display_name": "Python (kernel-launcher)", "language": "python",
        "metadata": {"process_proxy": {"class_name":
                                       "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy"}},
        "argv": [launcher, *opts, "--", python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    }, indent=1))
    out_path = os.environ.get("GATEWAY_BENCH_JSON") or f"/tmp/gateway-bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    log(f"work dir {root}; raw results -> {out_path}")
    all_reps: list[dict[str, dict]] = []
    raw = {"meta": {"n": N, "warmup": WARMUP, "launches": LAUNCHES, "storms": STORMS, "eg_polls": EG_POLLS,
                    "launch_timeout": LAUNCH_TIMEOUT, "reps": reps, "nproc": os.cpu_count(),
                    "loadavg_start": os.getloadavg(), "kernelspec": json.loads((specs / SPEC / "kernel.json").read_text())},
           "reps": all_reps}
    for rep in range(reps):
        results: dict[str, dict] = {}
        makers = [lambda w: GatewayLite(gateway_lite, launcher, specs, w)]
        if POOL:
            makers.append(lambda w: GatewayLite(gateway_lite, launcher, specs, w, label=POOL_LABEL, extra=(
                "--pool", f"{SPEC}={POOL}", "--kernel-env", "GATEWAY_BENCH_RUN")))
        makers += [lambda w, p=p: EnterpriseGateway(p, specs, w) for p in EG_POLLS]
        for i, make in enumerate(makers):
            work = root / f"rep{rep}-{i}"
            work.mkdir()
            gw = make(work)
            try:
                log(f"rep {rep + 1}/{reps}: {gw.label} at {gw.base} (pid {gw.proc.pid})")
                results[gw.label] = {}
                try:
                    (run_pool if gw.label == POOL_LABEL else run_gateway)(gw, results[gw.label])
                except Exception as e:  # noqa: BLE001 - report it, go on with the next gateway
                    log(f"{gw.label} FAILED: {e!r}")
                    results[gw.label]["error"] = repr(e)[:2000]
                results[gw.label]["loadavg_end"] = os.getloadavg()
            finally:
                gw.stop()
                _gateways.remove(gw.proc)
                left = marked_pids()
                if left:
                    log(f"{gw.label}: {len(left)} processes still alive after the gateway stopped; killing them")
                    cleanup()
        all_reps.append(results)
        Path(out_path).write_text(json.dumps(raw))
    labels = list(all_reps[0].keys())
    print(f"\n# gateway-lite vs Enterprise Gateway 3.3.0, same kernelspec (kernel-launcher + ipykernel, "
          f"EG DistributedProcessProxy on localhost); {reps} rep(s), medians over reps; "
          f"N={N} executes, {LAUNCHES} launches/rep; {os.cpu_count()} CPUs, loadavg {os.getloadavg()[0]:.1f}")
    raw["medians"] = report(all_reps)
    if POOL:
        raw["pool_medians"] = pool_bench.report(all_reps, POOL, fmt)
    raw["labels"] = labels
    Path(out_path).write_text(json.dumps(raw))
    print(f"\nraw results: {out_path}")


if __name__ == "__main__":
    main()
