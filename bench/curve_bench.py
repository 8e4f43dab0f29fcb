"""CurveZMQ's cost on the execute round trip through gateway-lite, against the clear-text raw
ZMQ floor measured in the same run (issue 13's goal: curve WS p50 - clear floor p50 <= 0.5 ms).

One kernelspec, `kl`: KERNEL_PYTHON -m ipykernel_launcher -f {connection_file} (gateway-lite
wraps it in kernel-launcher) with metadata.supported_encryption = ["curve"]; KERNEL_PYTHON is
venv-lab's (ipykernel 7.4, which binds its sockets as CurveZMQ servers when its connection file
has keys). Two gateway-lite processes per rep, each on the same spec:

  curve   --transport-encryption auto: the launcher gives the kernel a key pair, the gateway's
          sockets are CURVE clients. The kernel model must say transport_encryption "curve"
          (the run stops otherwise).
  clear   --transport-encryption none: no keys, NULL mechanism, HMAC-signed clear text. The
          model must say "none".

Per gateway, on one kernel, with the helpers of bench/gateway_bench.py (imported, same code):
  execute via WS  the kernel WebSocket (legacy JSON text frames); WARMUP then N sequential
                  `pass` executes; per execute the time from send to execute_reply (p50, p99)
                  and to the iopub idle status; executes/s = N / loop time.
  raw ZMQ floor   the SAME kernel, right after (its WebSocket closed), driven directly with
                  pyzmq + jupyter_client's Session (shell DEALER + iopub SUB), same loop and N.
                  The connection info is the kernel's own connection file (after -f in the
                  ipykernel command line). For the curve kernel it holds curve_publickey: the
                  floor's sockets are CURVE clients with that server key and a fresh key pair
                  from zmq.curve_keypair() (so the "curve floor" is what encryption costs
                  without a gateway); for the clear kernel they are NULL, as in gateway.sh.
The order of the two gateways alternates between reps (curve first in odd reps) so that drift of
a shared machine's load does not always fall on the same side. Medians over REPS of each rep's
percentiles. The key line is curve WS p50 - clear floor p50.

Cleanup as in gateway_bench.py: every gateway, launcher and kernel carries its run marker and is
killed on exit (normal, exception, SIGINT/SIGTERM).

Usage (from bench/curve.sh, which puts tests/ on PYTHONPATH for tests/support):
  curve_bench.py GATEWAY_LITE KERNEL_LAUNCHER KERNEL_PYTHON [REPS]
Environment knobs: GATEWAY_BENCH_N (500), GATEWAY_BENCH_WARMUP (50), CURVE_BENCH_JSON (raw
results, default /tmp/curve-bench-<time>.json).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gateway_bench as gb

CONFIGS = {
    # label: (gateway-lite arguments, transport_encryption the kernel model must show)
    "curve": (("--transport-encryption", "auto"), "curve"),
    "clear": (("--transport-encryption", "none"), "none"),
}


def measure(gw: gb.GatewayLite, want: str) -> dict:
    rest = gw.rest()
    kid, _, _ = gb.start(rest)
    try:
        model = rest.get_kernel(kid).json()
        if model.get("transport_encryption") != want:
            raise RuntimeError(f"{gw.label}: kernel model says transport_encryption "
                               f"{model.get('transport_encryption')!r}, expected {want!r}: {model}")
        ch = rest.channels(kid)
        try:
            ch.kernel_info()
            ws = gb.ws_executes(ch)
        finally:
            ch.close()
        floor = gb.zmq_executes(gb.connection_file_of(kid))
        if floor["curve"] != (want == "curve"):
            raise RuntimeError(f"{gw.label}: the connection file {'lacks' if want == 'curve' else 'has'} curve keys")
        return {"ws": ws, "zmq": floor, "rss_mb": gb.vmrss_mb(gw.proc.pid)}
    finally:
        gb.delete_and_wait(rest, kid)


def summary(r: dict) -> dict:
    s = {}
    for key in ("ws", "zmq"):
        x = r[key]
        s[f"{key}_p50"], s[f"{key}_p99"] = gb.pct(x["reply_ms"], 50), gb.pct(x["reply_ms"], 99)
        s[f"{key}_idle_p50"] = gb.pct(x["idle_ms"], 50)
        s[f"{key}_per_s"] = x["per_s"]
    return s


def report(reps: list[dict]) -> dict:
    med = {}
    for lab in CONFIGS:
        rows = [summary(rep[lab]) for rep in reps]
        med[lab] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    c, p = med["curve"], med["clear"]
    rows = [
        ("execute via WS p50 (ms)", "ws_p50", ".3f"),
        ("execute via WS p99 (ms)", "ws_p99", ".3f"),
        ("  ... -> idle p50 (ms)", "ws_idle_p50", ".3f"),
        ("execute via WS per second", "ws_per_s", ".0f"),
        ("raw ZMQ floor p50 (ms)", "zmq_p50", ".3f"),
        ("raw ZMQ floor p99 (ms)", "zmq_p99", ".3f"),
        ("  ... -> idle p50 (ms)", "zmq_idle_p50", ".3f"),
        ("raw ZMQ floor per second", "zmq_per_s", ".0f"),
    ]
    print(f"{'':34}{'curve':>10}{'clear':>10}{'curve-clear':>13}")
    for title, key, spec in rows:
        print(f"{title:34}{format(c[key], spec):>10}{format(p[key], spec):>10}{format(c[key] - p[key], '+' + spec):>13}")
    derived = {
        "curve_ws_minus_clear_floor": c["ws_p50"] - p["zmq_p50"],
        "curve_ws_minus_curve_floor": c["ws_p50"] - c["zmq_p50"],
        "clear_ws_minus_clear_floor": p["ws_p50"] - p["zmq_p50"],
        "curve_floor_minus_clear_floor": c["zmq_p50"] - p["zmq_p50"],
    }
    print()
    print(f"gateway overhead under curve:  curve WS p50 - curve floor p50 = {derived['curve_ws_minus_curve_floor']:.3f} ms")
    print(f"gateway overhead in clear:     clear WS p50 - clear floor p50 = {derived['clear_ws_minus_clear_floor']:.3f} ms")
    print(f"CurveZMQ without a gateway:    curve floor p50 - clear floor p50 = {derived['curve_floor_minus_clear_floor']:.3f} ms")
    print(f"curve WS p50 - clear floor p50 = {derived['curve_ws_minus_clear_floor']:.2f} ms (goal <= 0.5)")
    return {"medians": med, "derived": derived}


def kernel_python_ok(python: str) -> None:
    out = subprocess.run([python, "-c", "import ipykernel; print(ipykernel.__version__)"],
                         capture_output=True, text=True)
    version = tuple(int(x) for x in out.stdout.strip().split(".")[:2] if x.isdigit()) if out.returncode == 0 else ()
    if version < (7, 3):
        sys.exit(f"KERNEL_PYTHON {python} has ipykernel {out.stdout.strip() or out.stderr.strip()[-300:]}; "
                 "CurveZMQ needs ipykernel >= 7.3 (venv-lab: KL_PY_LAB from scripts/setup-env.sh)")


def main() -> None:
    gateway_lite, launcher, python = sys.argv[1:4]
    reps = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    kernel_python_ok(python)
    signal.signal(signal.SIGTERM, gb._on_signal)
    signal.signal(signal.SIGINT, gb._on_signal)
    atexit.register(gb.cleanup)
    root = Path(tempfile.mkdtemp(prefix="curve-bench-"))
    specs = root / "kernels"
    (specs / gb.SPEC).mkdir(parents=True)
    spec = {"display_name": "Python (CurveZMQ)", "language": "python",
            "metadata": {"supported_encryption": ["curve"]},
            "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]}
    (specs / gb.SPEC / "kernel.json").write_text(json.dumps(spec, indent=1))
    out_path = os.environ.get("CURVE_BENCH_JSON") or f"/tmp/curve-bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    gb.log(f"work dir {root}; raw results -> {out_path}")
    all_reps: list[dict] = []
    raw = {"meta": {"n": gb.N, "warmup": gb.WARMUP, "reps": reps, "nproc": os.cpu_count(),
                    "loadavg_start": os.getloadavg(), "kernelspec": spec, "configs": CONFIGS},
           "reps": all_reps}
    for rep in range(reps):
        order = list(CONFIGS) if rep % 2 == 0 else list(reversed(CONFIGS))
        results: dict = {}
        for lab in order:
            args, want = CONFIGS[lab]
            work = root / f"rep{rep}-{lab}"
            work.mkdir()
            gw = gb.GatewayLite(gateway_lite, launcher, specs, work, extra=args, label=f"gateway-lite {lab}")
            try:
                gb.log(f"rep {rep + 1}/{reps}: {gw.label} at {gw.base} (pid {gw.proc.pid})")
                results[lab] = measure(gw, want)
                results[lab]["loadavg_end"] = os.getloadavg()
                s = summary(results[lab])
                gb.log(f"{gw.label}: WS p50 {s['ws_p50']:.3f} ms, floor p50 {s['zmq_p50']:.3f} ms")
            finally:
                gw.stop()
                gb._gateways.remove(gw.proc)
        all_reps.append(results)
        Path(out_path).write_text(json.dumps(raw))
    print(f"\n# CurveZMQ vs clear text through gateway-lite, same kernelspec (ipykernel from {python}); "
          f"{reps} rep(s), medians over reps; N={gb.N} executes after {gb.WARMUP} warm-up; "
          f"{os.cpu_count()} CPUs, loadavg {os.getloadavg()[0]:.1f}")
    raw.update(report(all_reps))
    raw["meta"]["loadavg_end"] = os.getloadavg()
    Path(out_path).write_text(json.dumps(raw))
    print(f"\nraw results: {out_path}")


if __name__ == "__main__":
    main()
