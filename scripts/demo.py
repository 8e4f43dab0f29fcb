"""kernel-launcher under real EG, end to end: Jupyter Enterprise Gateway 3.3.0 starts a Python
kernel through kernel-launcher, code runs in it over EG's REST API and
WebSocket, an interrupt stops a long cell, and DELETE shuts it all down.

Run by scripts/demo.sh, which prepares the venvs, builds the binary and puts tests/ on
PYTHONPATH (for the shared helpers, tests/support).
Usage: demo.py KERNEL_LAUNCHER KERNEL_PYTHON
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support.kernels import JupyterRest, free_port, kernel_processes, kill_tree, wait_gone, wait_http_ok


def main() -> None:
    launcher, kernel_python = sys.argv[1], sys.argv[2]
    work = Path(tempfile.mkdtemp(prefix="kl-demo-"))
    spec_dir = work / "kernels" / "python_kernel_launcher"
    spec_dir.mkdir(parents=True)
    spec = {
        "display_name": "Python 3 (kernel-launcher)",
        "language": "python",
        "metadata": {
            "process_proxy": {
                "class_name": "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy"
            }
        },
        "argv": [
            launcher,
            "--RemoteProcessProxy.kernel-id", "{kernel_id}",
            "--RemoteProcessProxy.response-address", "{response_address}",
            "--RemoteProcessProxy.public-key", "{public_key}",
            "--RemoteProcessProxy.port-range", "{port_range}",
            "--", kernel_python, "-m", "ipykernel_launcher", "-f", "{connection_file}",
        ],
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=2))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        JUPYTER_PATH=str(work),
        JUPYTER_RUNTIME_DIR=str(work / "runtime"),
        EG_RESPONSE_IP="127.0.0.1",
        EG_RESPONSE_PORT=str(free_port()),
        EG_REMOTE_HOSTS="localhost",
        EG_KERNEL_LOG_DIR=str(work),
        EG_POLL_INTERVAL="0.05",
    )
    eg_bin = str(Path(sys.executable).parent / "jupyter-enterprisegateway")
    log = open(work / "eg.log", "w")
    eg = subprocess.Popen(
        [eg_bin, "--EnterpriseGatewayApp.ip=127.0.0.1", f"--EnterpriseGatewayApp.port={port}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_http_ok(f"{base}/api", eg, 60)
        print(f"EG 3.3.0 is up at {base} (log: {work / 'eg.log'})")
        rest = JupyterRest(base)
        t = time.monotonic()
        # EG refuses to start kernels for root unless the request names a user.
        resp = rest.start_kernel("python_kernel_launcher", env={"KERNEL_USERNAME": "demo"})
        if resp.status_code != 201:
            raise SystemExit(f"POST /api/kernels -> {resp.status_code}: {resp.text}")
        kernel = resp.json()
        print(f"POST /api/kernels -> 201 in {time.monotonic() - t:.2f} s: kernel {kernel['id']}")
        chans = rest.channels(kernel["id"])
        chans.kernel_info()
        print(f"kernel_info_reply {time.monotonic() - t:.2f} s after the POST")
        for code in ["1+1", "import os; (os.getpid(), open(f'/proc/{os.getppid()}/comm').read().strip())"]:
            r = chans.execute(code)
            print(f"  In:  {code}\n  Out: {r.text.strip()}")
        mid = chans.submit("print('sleeping', flush=True); import time; time.sleep(60)")
        chans.collect(mid, until_text="sleeping")
        rest.interrupt(kernel["id"])
        r = chans.collect(mid)
        print(f"  In:  time.sleep(60), then POST /interrupt\n  Out: {r.ename}")
        if r.ename != "KeyboardInterrupt":
            raise SystemExit("the interrupt did not reach the kernel")
        procs = kernel_processes(kernel["id"])
        chans.close()
        resp = rest.delete(kernel["id"])
        left = wait_gone(procs)
        print(f"DELETE -> {resp.status_code}; launcher and kernel processes left: {len(left)}")
        if left:
            raise SystemExit("kernel processes survived DELETE")
    finally:
        kill_tree(eg)
    print("demo ok")


if __name__ == "__main__":
    main()
