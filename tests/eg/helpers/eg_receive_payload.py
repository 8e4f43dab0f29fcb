"""Receive one launcher payload with Enterprise Gateway 3.3.0's own ResponseManager.

Runs in venv-eg. Usage: eg_receive_payload.py RESPONSE_PORT KERNEL_ID TIMEOUT_S [RESPONSE_IP]
(RESPONSE_IP: the address EG binds and reports, default 127.0.0.1)

Prints two JSON lines on stdout:
  1. {"response_address": "RESPONSE_IP:PORT", "public_key": "<EG's public key string>"}
  2. {"connection_info": {...}}   as decrypted and matched by EG's ResponseManager
     or {"error": "..."} (exit 2) when nothing arrived in time.
EG's own log output goes to stderr.
"""

import asyncio
import json
import logging
import os
import sys


def main() -> int:
    port, kernel_id, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    # Read by processproxy.py at import time.
    os.environ["EG_RESPONSE_IP"] = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"
    os.environ["EG_RESPONSE_PORT"] = port
    os.environ["EG_RESPONSE_PORT_RETRIES"] = "0"
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

    async def run() -> int:
        from enterprise_gateway.services.processproxies.processproxy import ResponseManager

        rm = ResponseManager.instance()
        rm.log.setLevel(logging.DEBUG)
        rm.register_event(kernel_id)
        print(json.dumps({"response_address": rm.response_address, "public_key": rm.public_key}), flush=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                info = await rm.get_connection_info(kernel_id)
                break
            except asyncio.TimeoutError:
                if loop.time() > deadline:
                    print(json.dumps({"error": f"no payload for {kernel_id} within {timeout}s"}), flush=True)
                    return 2
                await asyncio.sleep(0.05)
        print(json.dumps({"connection_info": info}), flush=True)
        return 0

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
