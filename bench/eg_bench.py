"""Benchmark through real Enterprise Gateway 3.3.0: POST /api/kernels -> 201,
and -> kernel_info_reply over EG's WebSocket, for kernel-launcher and for EG's
own launch_ipykernel.py, in the same run, same machine, same ipykernel.
Also: RSS of the whole kernel tree once the kernel answers.

EG polls for the launcher's payload every EG_POLL_INTERVAL (0.5 s), which
hides launcher speed; the run is repeated with EG_POLL_INTERVAL=0.05.
Usage (from bench/eg.sh, which puts tests/ on PYTHONPATH for the shared helpers, tests/support):
  eg_bench.py KERNEL_LAUNCHER KERNEL_PYTHON EG_SDIST [RUNS]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support.kernels import JupyterRest, free_port, kernel_processes, kill_tree, wait_gone, wait_http_ok

PROXY = {"process_proxy": {"class_name": "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy"}}
OPTS = [
    "--RemoteProcessProxy.kernel-id", "{kernel_id}",
    "--RemoteProcessProxy.response-address", "{response_address}",
    "--RemoteProcessProxy.public-key", "{public_key}",
    "--RemoteProcessProxy.port-range", "{port_range}",
]


def rss_mb(pids) -> float:
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def write_specs(root: Path, launcher: str, python: str, sdist: str) -> None:
    ipy = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    specs = {
        "ours": [launcher, *OPTS, "--", *ipy],
        "eg": [python, f"{sdist}/etc/kernel-launchers/python/scripts/launch_ipykernel.py", *OPTS],
    }
    for name, argv in specs.items():
        d = root / name
        d.mkdir(parents=True)
        (d / "kernel.json").write_text(json.dumps({"display_name": name, "language": "python", "metadata": PROXY, "argv": argv}))


def run_eg(poll: str | None, specs_root: Path, runs: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="kl-egbench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, JUPYTER_PATH=str(specs_root.parent), JUPYTER_RUNTIME_DIR=str(work / "rt"),
               EG_RESPONSE_IP="127.0.0.1", EG_RESPONSE_PORT=str(free_port()), EG_REMOTE_HOSTS="localhost",
               EG_KERNEL_LOG_DIR=str(work))
    if poll:
        env["EG_POLL_INTERVAL"] = poll
    eg_bin = str(Path(sys.executable).parent / "jupyter-enterprisegateway")
    eg = subprocess.Popen([eg_bin, "--EnterpriseGatewayApp.ip=127.0.0.1", f"--EnterpriseGatewayApp.port={port}"],
                          env=env, stdout=open(work / "eg.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    results = {"ours": {"201": [], "info": [], "rss": []}, "eg": {"201": [], "info": [], "rss": []}}
    try:
        wait_http_ok(f"{base}/api", eg, 60)
        rest = JupyterRest(base)
        for i in range(runs + 1):  # the first round warms EG up and is discarded
            for name in ("ours", "eg"):
                t = time.monotonic()
                r = rest.start_kernel(name, env={"KERNEL_USERNAME": "bench"})
                t201 = time.monotonic() - t
                assert r.status_code == 201, r.text
                kid = r.json()["id"]
                ch = rest.channels(kid)
                ch.kernel_info()
                tinfo = time.monotonic() - t
                procs = kernel_processes(kid)
                if i > 0:
                    results[name]["201"].append(t201 * 1000)
                    results[name]["info"].append(tinfo * 1000)
                    if i == runs:
                        time.sleep(1)
                        results[name]["rss"].append((rss_mb(p.pid for p in procs), len(procs)))
                ch.close()
                rest.delete(kid)
                wait_gone(procs)
    finally:
        kill_tree(eg)
    return results


def main() -> None:
    launcher, python, sdist = sys.argv[1:4]
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    specs_root = Path(tempfile.mkdtemp(prefix="kl-egbench-specs-")) / "kernels"
    write_specs(specs_root, launcher, python, sdist)
    print(f"# Through EG 3.3.0 (DistributedProcessProxy, localhost), {runs} runs each, medians in ms")
    for poll in (None, "0.05"):
        res = run_eg(poll, specs_root, runs)
        label = f"EG_POLL_INTERVAL={poll or '0.5 (default)'}"
        print(f"\n{label}")
        print(f"{'launcher':<28} {'POST->201':>10} {'->kernel_info':>14}")
        med = {}
        for name, title in (("ours", "kernel-launcher"), ("eg", "EG launch_ipykernel.py")):
            m201 = statistics.median(res[name]["201"])
            minfo = statistics.median(res[name]["info"])
            med[name] = (m201, minfo)
            print(f"{title:<28} {m201:>10.0f} {minfo:>14.0f}")
        print(f"{'EG / ours':<28} {med['eg'][0] / med['ours'][0]:>9.2f}x {med['eg'][1] / med['ours'][1]:>13.2f}x")
        if poll is None:
            print("\nkernel tree RSS once the kernel answers (MB, processes):")
            for name in ("ours", "eg"):
                rss, n = res[name]["rss"][0]
                print(f"  {name:<6} {rss:6.1f} MB in {n} processes")


if __name__ == "__main__":
    main()
