"""Drive a real kernel started by kernel-launcher: execute, interrupt over the
comm port, check the kernel survived, then shut it down over ZMQ.

Usage: kernel_client.py CONNECTION_JSON COMM_PORT LANGUAGE
Prints one JSON object with what it observed; exits non-zero on any failure.
"""
import json
import socket
import sys
import time

from jupyter_client import BlockingKernelClient

CODE = {
    "python": {"add": "1+1", "sleep": "import time; time.sleep(300)", "define": "x = 40 + 2", "use": "x"},
    "r": {"add": "1+1", "sleep": "Sys.sleep(300)", "define": "x <- 40 + 2", "use": "x"},
}


def run(client, code, timeout=60):
    """Execute code; return (reply content, text outputs, error names)."""
    msg_id = client.execute(code)
    outputs, errors = [], []
    deadline = time.time() + timeout
    while True:
        msg = client.get_iopub_msg(timeout=max(1, deadline - time.time()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        t, c = msg["msg_type"], msg["content"]
        if t in ("execute_result", "display_data"):
            outputs.append(c["data"].get("text/plain", ""))
        elif t == "stream":
            outputs.append(c["text"])
        elif t == "error":
            errors.append(c["ename"])
        elif t == "status" and c["execution_state"] == "idle":
            break
    reply = client.get_shell_msg(timeout=timeout)
    return reply["content"], outputs, errors


def main():
    conn_path, comm_port, lang = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    code = CODE[lang]
    client = BlockingKernelClient()
    client.load_connection_file(conn_path)
    # No heartbeat channel: with one, wait_for_ready takes a kernel whose heartbeat has not
    # answered within 1 s (a slow start under load) for a dead one.
    client.start_channels(hb=False)
    client.wait_for_ready(timeout=60)
    seen = {}
    _, out, _ = run(client, code["add"])
    seen["add"] = "".join(out)
    run(client, code["define"])

    msg_id = client.execute(code["sleep"])
    # Wait until the cell is running, then interrupt through the comm port.
    while True:
        msg = client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status" \
                and msg["content"]["execution_state"] == "busy":
            break
    time.sleep(0.5)
    with socket.create_connection(("127.0.0.1", comm_port), timeout=5) as s:
        s.sendall(json.dumps({"signum": 2}).encode())
    errors, outputs = [], []
    while True:
        msg = client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "error":
            errors.append(msg["content"]["ename"])
        elif msg["msg_type"] == "stream":
            outputs.append(msg["content"]["text"])
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    client.get_shell_msg(timeout=60)
    seen["interrupt_errors"] = errors
    seen["interrupt_output"] = "".join(outputs)
    _, out, _ = run(client, code["use"])
    seen["after_interrupt"] = "".join(out)
    client.shutdown()
    client.stop_channels()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
