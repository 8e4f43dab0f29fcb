"""Enterprise Gateway 3.3.0's own integration tests (enterprise_gateway/itests from the sdist on
PyPI, unmodified, run with venv-eg's python) against gateway-lite.

The same classes tests/eg/test_eg_itests.py runs against EG itself (support.kernels.ITEST_CLASSES):
  test_python_kernel.py  TestPythonKernelLocal + TestPythonKernelDistributed (5 tests each:
                         hostname, hello world, restart, interrupt, scope)
  test_r_kernel.py       TestRKernelLocal (4 tests)
each pointed at one of these kernelspecs in gateway-lite's --kernelspec-dir:
  gl_py_plain   plain local ipykernel spec (no launcher in argv: gateway-lite wraps it in
                kernel-launcher)
  gl_py_eg      EG-style launcher spec: kernel-launcher with EG's --RemoteProcessProxy.* options
                and a DistributedProcessProxy process_proxy, as written for EG 3.3.0
  gl_py_eg_own  EG's own launcher (launch_ipykernel.py from the sdist), as EG ships it
  gl_ir_plain   plain local IRkernel spec (wrapped by gateway-lite)
  gl_ir_eg      IRkernel under kernel-launcher with EG's options (what tests/eg runs against EG)
The itests client sends no token, so this gateway runs with --no-auth (it listens on loopback).

Run:  scripts/setup-env.sh && source ~/.cache/kernel-launcher/env.sh &&
      cargo build -p launcher -p gateway-lite &&
      $KL_PY_LAB -m pytest -v tests/gateway/test_eg_itests.py
"""

from __future__ import annotations

import pytest

from support.gateway import EG_PROXY, run_gateway
from support.kernels import EG_LEGACY_OPTS, ITEST_CLASSES, check_itests, run_eg_itests


def _specs(peers) -> dict[str, dict]:
    launch_ipykernel = peers.eg_sdist / "etc/kernel-launchers/python/scripts/launch_ipykernel.py"
    return {
        "gl_py_plain": {"argv": peers.ipykernel_argv(), "language": "python"},
        "gl_py_eg": {
            "argv": [peers.launcher, *EG_LEGACY_OPTS, "--", *peers.ipykernel_argv()],
            "language": "python",
            "metadata": EG_PROXY,
        },
        "gl_py_eg_own": {
            "argv": [peers.py_kernel, str(launch_ipykernel), *EG_LEGACY_OPTS],
            "language": "python",
            "metadata": EG_PROXY,
        },
        "gl_ir_plain": {"argv": peers.irkernel_argv(), "language": "R"},
        "gl_ir_eg": {
            "argv": [peers.launcher, *EG_LEGACY_OPTS, "--", *peers.irkernel_argv()],
            "language": "R",
            "metadata": EG_PROXY,
        },
    }


@pytest.fixture(scope="module")
def gateway(peers, tmp_path_factory):
    with run_gateway(peers, tmp_path_factory.mktemp("gl-itests"), _specs(peers), "gl_py_plain", token="") as gw:
        yield gw


def _run(peers, gateway, lang: str, env_names: dict) -> None:
    test_file, selector, expected = ITEST_CLASSES[lang]
    proc = run_eg_itests(peers.py_eg, peers.eg_sdist, gateway.host, test_file, selector, env_names)
    try:
        check_itests(proc, expected, what=f"EG itests against gateway-lite ({env_names})")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- gateway-lite log tail ---\n{gateway.log_tail(80)}") from None
    # Every kernel the itests started was shut down through gateway-lite.
    assert gateway.kernels() == [], f"kernels left in gateway-lite after the itests: {gateway.kernels()}"


@pytest.mark.parametrize("spec_name", ["gl_py_plain", "gl_py_eg", "gl_py_eg_own"])
def test_eg_itests_python_on_gateway_lite(peers, gateway, spec_name):
    _run(peers, gateway, "python", {"PYTHON_KERNEL_LOCAL_NAME": spec_name, "PYTHON_KERNEL_DISTRIBUTED_NAME": spec_name})


@pytest.mark.parametrize("spec_name", ["gl_ir_plain", "gl_ir_eg"])
def test_eg_itests_r_on_gateway_lite(peers, gateway, spec_name):
    _run(peers, gateway, "r", {"R_KERNEL_LOCAL_NAME": spec_name})
