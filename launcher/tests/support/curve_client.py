"""Check a kernel started by kernel-launcher with CurveZMQ keys, as a gateway would use it.

Usage: curve_client.py CONNECTION_JSON
The connection info is the launcher's payload (ip set to 127.0.0.1), curve keys included.
Prints one JSON object with what it observed; exits non-zero on an unexpected failure.
  plain_kernel_info: "none" when a client without the keys got no kernel_info_reply in 5 s
  heartbeat: what the heartbeat echoed to a CURVE client (after the launcher's probe)
  kernel_info, execute: what a CURVE client got on shell and iopub
Then shuts the kernel down over ZMQ (CURVE).
"""
import json
import queue
import sys

import zmq
from jupyter_client import BlockingKernelClient


def main():
    with open(sys.argv[1]) as f:
        info = json.load(f)
    seen = {}

    # Without the keys: the kernel must not answer (CURVE servers refuse NULL clients).
    plain = BlockingKernelClient()
    plain.load_connection_info({k: v for k, v in info.items() if not k.startswith("curve_")})
    plain.start_channels(hb=False)
    plain.kernel_info()
    try:
        plain.get_shell_msg(timeout=5)
        seen["plain_kernel_info"] = "reply"
    except queue.Empty:
        seen["plain_kernel_info"] = "none"
    plain.stop_channels()

    # The heartbeat, which the launcher probed, still echoes for a CURVE client.
    ctx = zmq.Context.instance()
    hb = ctx.socket(zmq.REQ)
    hb.linger = 0
    hb.curve_serverkey = info["curve_publickey"].encode()
    hb.curve_publickey, hb.curve_secretkey = zmq.curve_keypair()
    hb.connect(f"tcp://{info['ip']}:{info['hb_port']}")
    hb.send(b"ping")
    seen["heartbeat"] = hb.recv().decode() if hb.poll(30000) else "none"
    hb.close()

    client = BlockingKernelClient()
    client.load_connection_info(info)
    client.start_channels(hb=False)
    client.wait_for_ready(timeout=60)
    reply = client.kernel_info(reply=True, timeout=30)
    seen["kernel_info"] = reply["content"]["status"]
    msg_id = client.execute("6 * 7")
    out = []
    while True:
        msg = client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "execute_result":
            out.append(msg["content"]["data"]["text/plain"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    seen["execute"] = "".join(out)
    client.shutdown()
    client.stop_channels()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
