"""gateway_provisioners 0.5.0 with CurveZMQ transport encryption, through kernel-launcher.

Jupyter Server runs with transport_encryption=required; the kernelspecs are written by
`kernel-launcher kernelspec install --for gp --transport-encryption required` (which lists
"curve" in metadata.supported_encryption), so GP fills {transport_encryption} with `required`
and insists on two CurveZMQ keys in the payload.

- ipykernel 7.4 takes the keys: GP connects over CurveZMQ and the whole lifecycle works.
- ipykernel 6.31 ignores them: the launcher reports no keys, GP fails the start naming the
  kernel, the launcher exits 69 and nothing is left running.
"""

import time

from support.kernels import kernel_processes, pids_with_env, run_lifecycle

LAUNCHER_SAYS_CURVE = "binds its sockets as CurveZMQ servers"


def launcher_logs(server) -> dict:
    return {p.name: p.read_text(errors="replace") for p in server.kernel_log_dir.glob("kernel-*.log")}


def test_gp_curve_ipykernel_7(launcher, gp_curve_server, failure_context):
    spec = gp_curve_server.specs["gen_gp_curve_py7"]
    assert spec.metadata["supported_encryption"] == ["curve"], spec.metadata
    before = set(launcher_logs(gp_curve_server))
    run_lifecycle(gp_curve_server, spec, failure_context, check_reported_pid=False)
    kid = failure_context[-1][1]
    log = gp_curve_server.kernel_log(kid)
    # Started and restarted: both launches saw a CURVE kernel and reported the keys.
    assert log.count(LAUNCHER_SAYS_CURVE) >= 2, log[-4000:]
    assert "does not do CurveZMQ" not in log, log[-4000:]
    # GP got both keys (it logs the connection info it received at DEBUG).
    received = gp_curve_server.log_tail(400, grep=kid)
    assert "curve_publickey" in received, received[-3000:]
    assert set(launcher_logs(gp_curve_server)) - before, "no kernel log was written"


def test_gp_curve_required_ipykernel_6_fails_fast(launcher, gp_curve_server):
    spec = gp_curve_server.specs["gen_gp_curve_py6"]
    before = set(launcher_logs(gp_curve_server))
    rest = gp_curve_server.rest()
    started = time.monotonic()
    r = rest.start_kernel(spec.name)
    took = time.monotonic() - started
    assert r.status_code >= 400, f"POST /api/kernels {spec.name} should fail: HTTP {r.status_code}: {r.text[:2000]}"
    gp_log = gp_curve_server.log_tail(300)
    assert "did not return valid CurveZMQ keys" in gp_log, gp_log[-5000:]
    new = {k: v for k, v in launcher_logs(gp_curve_server).items() if k not in before}
    assert len(new) == 1, f"expected one new kernel log, got {sorted(new)}"
    (name, log), = new.items()
    kid = name.removeprefix("kernel-").removesuffix(".log")
    assert f"kernel {kid} cannot do CurveZMQ" in log and "ipykernel >= 7.3" in log, log[-4000:]
    # The launcher exits 69 once GP has the payload; give it a moment to write its last line.
    deadline = time.monotonic() + 60
    while "exiting with code 69" not in log and time.monotonic() < deadline:
        time.sleep(0.25)
        log = gp_curve_server.kernel_log(kid)
    assert "kernel-launcher exiting with code 69" in log, log[-4000:]
    deadline = time.monotonic() + 60
    while kernel_processes(kid) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not kernel_processes(kid), f"left running: {kernel_processes(kid)}"
    # GP failed the start on the payload, not on its launch timeout.
    print(f"refused start answered in {took:.1f} s: HTTP {r.status_code}")
    assert not [p for p in pids_with_env("KERNEL_ID", kid)]
