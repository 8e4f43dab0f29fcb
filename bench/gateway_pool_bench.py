"""The warm-pool part of bench/gateway_bench.py (gateway-lite `--pool kl=N` against the same
measurements on gateways without a pool, Enterprise Gateway 3.3.0 included, in the same run).

  pooled launch   POOL_LAUNCHES sequential claims, each once the pool is full again (a warm
                  pool): POST /api/kernels -> 201, and -> kernel_info_reply over the kernel
                  WebSocket (POST + WS connect + kernel_info_request until its reply), the same
                  client code as the launch rows of the main table.
  storm + execute N concurrent POSTs (threads released by a barrier); each thread then opens
                  the kernel's WebSocket, waits for kernel_info and executes `6*7`, which must
                  answer 42 ("all usable"). Wall until every 201, wall until every kernel has
                  answered its cell, failures (non-201, no answer, wrong answer), then DELETE of
                  all. On the pooled gateway the pool is full when the storm starts, and the
                  pool's hit counter says how many came from it. Gateways without a pool run
                  the same storm (every kernel launched on demand).
"""

from __future__ import annotations

import json
import threading
import time

import requests

POOL_LAUNCHES = 10
FILL_TIMEOUT = 900.0  # only against hangs: filling a pool of 20 on 2 busy cores
CELL_TIMEOUT = 180.0


def metric(gw, name: str) -> float | None:
    r = requests.get(f"{gw.base}/metrics", headers=gw.rest().headers, timeout=30)
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def wait_full(gw, spec: str, n: int, log) -> float:
    """Waits until the pool holds n ready kernels; returns how long that took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < FILL_TIMEOUT:
        if metric(gw, f'gateway_lite_pool_ready{{kernel_name="{spec}"}}') == n:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise TimeoutError(f"{gw.label}: the pool did not fill to {n} within {FILL_TIMEOUT}s")


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


def execute_value(ch, code: str) -> str:
    """Runs `code` (store_history on) and returns its execute_result text/plain."""
    msg = ch._msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                      "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})  # fmt: skip
    res = ch.collect(ch.send(msg), timeout=CELL_TIMEOUT)
    if res.status != "ok":
        raise RuntimeError(f"{code!r}: {res.status} {res.ename}: {res.evalue}")
    return res.text.strip()


def pooled_launches(gw, spec: str, size: int, kenv: dict, log) -> dict:
    rest = gw.rest()
    out = {"fill_s": wait_full(gw, spec, size, log), "post_201_ms": [], "kernel_info_ms": [], "hits": 0}
    hits0 = metric(gw, 'gateway_lite_pool_requests_total{outcome="hit"}') or 0
    ids = []
    for _ in range(POOL_LAUNCHES):
        wait_full(gw, spec, size, log)
        t0 = time.monotonic()
        r = requests.post(f"{rest.base_url}/api/kernels", json={"name": spec, "env": kenv}, headers=rest.headers,
                          timeout=120)  # fmt: skip
        t201 = time.monotonic() - t0
        if r.status_code != 201:
            raise RuntimeError(f"POST: HTTP {r.status_code}: {r.text[:500]}")
        kid = r.json()["id"]
        ch = rest.channels(kid)
        ch.kernel_info()
        tinfo = time.monotonic() - t0
        ch.close()
        ids.append(kid)
        out["post_201_ms"].append(t201 * 1000)
        out["kernel_info_ms"].append(tinfo * 1000)
    out["hits"] = (metric(gw, 'gateway_lite_pool_requests_total{outcome="hit"}') or 0) - hits0
    parallel(lambda k: rest.delete(k), ids)
    return out


def storm_execute(gw, spec: str, n: int, kenv: dict, log, pool_size: int = 0) -> dict:
    rest = gw.rest()
    if pool_size:
        wait_full(gw, spec, pool_size, log)
    hits0 = metric(gw, 'gateway_lite_pool_requests_total{outcome="hit"}') if pool_size else None
    barrier = threading.Barrier(n)
    t0 = time.monotonic()

    def one(_):
        barrier.wait()
        r = requests.post(f"{rest.base_url}/api/kernels", json={"name": spec, "env": kenv}, headers=rest.headers,
                          timeout=600)  # fmt: skip
        t201 = time.monotonic()
        if r.status_code != 201:
            return ("post", f"HTTP {r.status_code}: {r.text[:200]}", None, None)
        kid = r.json()["id"]
        ch = rest.channels(kid)
        try:
            ch.kernel_info(timeout=CELL_TIMEOUT)
            value = execute_value(ch, "6*7")
        except Exception as e:  # noqa: BLE001 - a failure to count
            return ("cell", f"{kid}: {e!r}"[:300], kid, t201)
        finally:
            ch.close()
        if value != "42":
            return ("cell", f"{kid}: answered {value!r}", kid, t201)
        return (None, kid, kid, t201, time.monotonic())

    results = parallel(one, list(range(n)))
    done = [r for r in results if isinstance(r, tuple) and r[0] is None]
    failed = [r if isinstance(r, tuple) else ("error", repr(r)[:300]) for r in results if not (isinstance(r, tuple) and r[0] is None)]
    t201s = [r[3] for r in results if isinstance(r, tuple) and r[3] is not None]
    out = {
        "n": n,
        "failures": len(failed),
        "failure_samples": [f[1] for f in failed[:5]],
        "wall_201_s": (max(t201s) - t0) if t201s else float("nan"),
        "wall_executed_s": (max(r[4] for r in done) - t0) if done else float("nan"),
    }
    if pool_size:
        out["hits"] = (metric(gw, 'gateway_lite_pool_requests_total{outcome="hit"}') or 0) - (hits0 or 0)
    if failed:
        log(f"{gw.label} storm+execute {n}: {len(failed)} failed, e.g. {out['failure_samples'][:2]}")
    ids = [r[2] for r in results if isinstance(r, tuple) and len(r) > 2 and r[2]]
    parallel(lambda k: rest.delete(k), ids)
    return out


def summarize(r: dict) -> dict:
    import statistics

    s = {}
    if "pool_launch" in r:
        la = r["pool_launch"]
        s["pool_post_201_ms"] = statistics.median(la["post_201_ms"])
        s["pool_kernel_info_ms"] = statistics.median(la["kernel_info_ms"])
        s["pool_kernel_info_max_ms"] = max(la["kernel_info_ms"])
        s["pool_launch_hits"] = la["hits"]
        s["pool_fill_s"] = la["fill_s"]
    if "launch" in r:
        s["pool_kernel_info_ms"] = statistics.median(r["launch"]["kernel_info_ms"])
        s["pool_post_201_ms"] = statistics.median(r["launch"]["post_201_ms"])
    if "storm_exec" in r:
        st = r["storm_exec"]
        s["se_fail"] = st["failures"]
        s["se_201"] = st["wall_201_s"]
        s["se_exec"] = st["wall_executed_s"]
        if "hits" in st:
            s["se_hits"] = st["hits"]
    return s


def report(all_reps: list[dict[str, dict]], size: int, fmt) -> dict:
    import statistics

    labels = [lab for lab in all_reps[0] if any("storm_exec" in rep.get(lab, {}) or "pool_launch" in rep.get(lab, {}) for rep in all_reps)]
    if not labels:
        return {}
    med = {}
    for lab in labels:
        rows = [summarize(rep[lab]) for rep in all_reps if lab in rep]
        keys = {k for r in rows for k in r}
        med[lab] = {k: statistics.median([r[k] for r in rows if k in r]) for k in keys}
    pool = next((lab for lab in labels if "pool" in lab), labels[0])
    others = [lab for lab in labels if lab != pool]
    print(f"\n# warm pool: gateway-lite --pool kl={size} against gateways launching on demand, same run "
          f"({POOL_LAUNCHES} pooled launches/rep, each with the pool full; the non-pooled launch rows are "
          "the main table's)")
    ratio_head = {lab: (lab.replace("EG poll ", "EG ") if lab.startswith("EG") else "gl") + " / pool" for lab in others}
    head = f"{'':48}{pool:>20}" + "".join(f"{lab:>14}" for lab in others) + "".join(
        f"{ratio_head[lab]:>16}" for lab in others)
    print(head)
    print("-" * len(head))
    rows = [
        ("POST -> 201 (ms)", "pool_post_201_ms", ".1f"),
        ("POST -> kernel_info_reply p50 (ms)", "pool_kernel_info_ms", ".1f"),
        ("  ... slowest of the pooled launches (ms)", "pool_kernel_info_max_ms", ".1f"),
        ("  ... launches served from the pool", "pool_launch_hits", ".0f"),
        (f"pool of {size}: filled after start (s)", "pool_fill_s", ".1f"),
        (f"storm of {size} + 6*7 in each: failures", "se_fail", ".0f"),
        (f"storm of {size}: served from the pool", "se_hits", ".0f"),
        (f"storm of {size}: wall until all 201 (s)", "se_201", ".2f"),
        (f"storm of {size}: wall until every cell answered (s)", "se_exec", ".2f"),
    ]
    for title, key, spec in rows:
        b = med[pool].get(key)
        line = f"{title:48}{fmt(b, spec):>20}" + "".join(f"{fmt(med[lab].get(key), spec):>14}" for lab in others)
        for lab in others:
            v = med[lab].get(key)
            ok = v is not None and b not in (None, 0) and v == v and b == b and key not in ("se_fail", "se_hits", "pool_launch_hits")
            line += f"{(fmt(v / b, '.1f') + 'x') if ok else '':>16}"
        print(line)
    return med


if __name__ == "__main__":
    print(json.dumps({"note": "imported by bench/gateway_bench.py"}))
