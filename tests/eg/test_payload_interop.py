"""Payload interop in both directions.

(i)  Our launcher's payload, received and decrypted by EG 3.3.0's own ResponseManager
     (helpers/eg_receive_payload.py in venv-eg), then used: a jupyter_client connects to the
     kernel with it, and the comm port is exercised. EG's own launch_ipykernel.py runs the same
     test as the reference.
(ii) EG's own launch_ipykernel.py payload captured by capture_eg_payload.py (the fixture for the
     Rust-side decrypt test) is checked here to be complete and decryptable.
"""

import base64
import json
import os
import select
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from Cryptodome.Cipher import AES, PKCS1_v1_5
from Cryptodome.PublicKey import RSA
from Cryptodome.Util.Padding import unpad

from support.kernels import describe, free_port, kernel_processes, kill_tree, wait_gone

HERE = Path(__file__).resolve().parent
PORT_FIELDS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from {proc.args[:2]} within {timeout}s")
    return proc.stdout.readline()


def _comm_send(port: int, obj: dict) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(json.dumps(obj).encode())
        s.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("which", ["eg_own", "ours_ipykernel", "ours_sleep"])
def test_payload_decrypted_by_eg_response_manager(request, paths, which, tmp_path):
    kid = str(uuid.uuid4())
    recv = subprocess.Popen(
        [paths.py_eg, str(HERE / "helpers" / "eg_receive_payload.py"), str(free_port()), kid, "60"],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "receiver.log", "w"),
        text=True,
        start_new_session=True,
    )
    launcher_proc = None
    try:
        hello = json.loads(_readline(recv, 60))
        addr, pk = hello["response_address"], hello["public_key"]
        ipykernel = [paths.py_kernel, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        if which == "eg_own":
            argv = [
                paths.py_kernel,
                str(paths.eg_launch_ipykernel),
                "--RemoteProcessProxy.kernel-id", kid,
                "--RemoteProcessProxy.response-address", addr,
                "--RemoteProcessProxy.public-key", pk,
                "--RemoteProcessProxy.port-range", "0..0",
            ]
        else:
            kl = request.getfixturevalue("launcher")
            kernel = ipykernel if which == "ours_ipykernel" else ["sleep", "300"]
            argv = [kl, "--kernel-id", kid, "--response-address", addr, "--public-key", pk,
                    "--port-range", "0..0", "--", *kernel]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_", "EG_", "JPY_"))}
        env["KERNEL_ID"] = kid  # as EG sets it; also lets the test find the process tree
        launcher_proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=open(tmp_path / "launcher.log", "w"),
            stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        )
        line = _readline(recv, 90)
        got = json.loads(line)
        assert "connection_info" in got, f"EG ResponseManager got nothing: {got}\n{(tmp_path / 'launcher.log').read_text()[-3000:]}\n{(tmp_path / 'receiver.log').read_text()[-3000:]}"
        info = got["connection_info"]

        assert info.get("kernel_id") == kid, info
        ports = [info.get(f) for f in (*PORT_FIELDS, "comm_port")]
        assert all(type(p) is int and 0 < p < 65536 for p in ports), f"ports not all ints: {info}"
        assert len(set(ports)) == 6, f"5 kernel ports + comm_port not distinct: {ports}"
        assert isinstance(info.get("key"), str) and info["key"], info
        assert info.get("transport") == "tcp" and info.get("signature_scheme") == "hmac-sha256", info
        assert type(info.get("pid")) is int and type(info.get("pgid")) is int, info
        tree = kernel_processes(kid)
        assert info["pid"] in {p.pid for p in tree}, f"reported pid {info['pid']} not in {describe(tree)}"
        if which != "eg_own":
            assert info["pid"] != launcher_proc.pid, "reported pid is the launcher, not the kernel"
            assert os.getpgid(info["pid"]) == info["pgid"], info

        if which != "ours_sleep":
            from jupyter_client import BlockingKernelClient  # venv-eg: jupyter_client 6, as EG uses

            kc = BlockingKernelClient()
            kc.load_connection_info({**{f: info[f] for f in PORT_FIELDS}, "ip": "127.0.0.1", "key": info["key"],
                                     "transport": "tcp", "signature_scheme": info["signature_scheme"]})
            # No heartbeat channel: with one, wait_for_ready takes a kernel whose heartbeat has not
            # answered within 1 s (a slow start under load) for a dead one.
            kc.start_channels(hb=False)
            try:
                kc.wait_for_ready(timeout=60)
            finally:
                kc.stop_channels()

        comm = info["comm_port"]
        _comm_send(comm, {"signum": 0})  # EG's liveness probe: must connect
        assert launcher_proc.poll() is None, "launcher died on signum 0"
        _comm_send(comm, {"shutdown": 1})
        os.kill(launcher_proc.pid, signal.SIGTERM)
        try:
            launcher_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launcher {which} did not exit within 30s of shutdown + SIGTERM")
        survivors = wait_gone(tree)
        assert not survivors, f"left behind: {describe(survivors)}"
    finally:
        if launcher_proc is not None:
            kill_tree(launcher_proc)
            for p in kernel_processes(kid):
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except OSError:
                    pass
        kill_tree(recv)


def test_capture_eg_payload_script(paths, tmp_path):
    """capture_eg_payload.py writes a payload of EG's own launcher plus the private key that opens it."""
    out = tmp_path / "eg-payload.json"
    subprocess.run([paths.py_kernel, str(HERE / "capture_eg_payload.py"), str(out)], check=True, timeout=120)
    data = json.loads(out.read_text())
    outer = json.loads(base64.b64decode(data["payload"]))
    assert outer["version"] == 1 and set(outer) >= {"key", "conn_info"}, outer
    key = RSA.import_key(data["private_key_pem"])
    aes_key = PKCS1_v1_5.new(key).decrypt(base64.b64decode(outer["key"]), None)
    assert aes_key is not None and len(aes_key) == 16
    inner = json.loads(unpad(AES.new(aes_key, AES.MODE_ECB).decrypt(base64.b64decode(outer["conn_info"])), 16))
    assert inner["kernel_id"] == data["kernel_id"], inner
    assert all(isinstance(inner[f], int) for f in (*PORT_FIELDS, "pid", "pgid", "comm_port")), inner
    assert len(data["public_key"]) == 216 and data["public_key"].startswith("MIGfMA0GCSqGSIb3"), data["public_key"]
