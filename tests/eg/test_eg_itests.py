"""Enterprise Gateway's own integration tests (enterprise_gateway/itests from the 3.3.0 sdist,
downloaded by scripts/setup-env.sh) run unmodified against the EG fixture.

Only the classes that need no Spark/YARN are selected:
  test_python_kernel.py: TestPythonKernelLocal (PYTHON_KERNEL_LOCAL_NAME) and
                         TestPythonKernelDistributed (PYTHON_KERNEL_DISTRIBUTED_NAME),
                         5 tests each: hostname, hello world, restart, interrupt, scope
  test_r_kernel.py:      TestRKernelLocal (R_KERNEL_LOCAL_NAME), 4 tests
The itests' GatewayClient reads GATEWAY_HOST (default localhost:8888), KERNEL_USERNAME,
KERNEL_LAUNCH_TIMEOUT and REQUEST_TIMEOUT at import time; test_base.py builds its hostname
regex from ITEST_HOSTNAME_PREFIX + "*" (an empty prefix gives the invalid regex "*").
"""

import re
import socket
import subprocess

import pytest


def run_itests(paths, eg_server, test_file: str, selector: str, env_names: dict) -> subprocess.CompletedProcess:
    sdist = paths.eg_sdist
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(sdist.parent),
        "GATEWAY_HOST": eg_server.base_url.removeprefix("http://"),
        "KERNEL_USERNAME": "kl-e2e",
        "KERNEL_LAUNCH_TIMEOUT": "90",
        "REQUEST_TIMEOUT": "30",  # per-message wait of the itests client; generous for these cells
        "ITEST_HOSTNAME_PREFIX": socket.gethostname(),
        "LOG_LEVEL": "INFO",
        **env_names,
    }
    cmd = [
        paths.py_eg,
        "-m",
        "pytest",
        f"enterprise_gateway/itests/{test_file}",
        "-k",
        selector,
        "-v",
        "--maxfail=2",  # a broken kernel costs REQUEST_TIMEOUT per cell; two failures say enough
        "-p",
        "no:cacheprovider",
        "-c",
        "/dev/null",  # not the sdist's pyproject (its filterwarnings=error targets EG's unit tests)
        "--rootdir",
        str(sdist),
    ]
    return subprocess.run(cmd, cwd=sdist, env=env, capture_output=True, text=True, timeout=900)


def _check(proc, expected_passed: int):
    out = proc.stdout + proc.stderr
    m = re.search(r"(\d+) passed", out)
    passed = int(m.group(1)) if m else 0
    assert proc.returncode == 0 and passed == expected_passed and " failed" not in out, (
        f"EG itests: exit {proc.returncode}, {passed} passed (expected {expected_passed})\n{out[-12000:]}"
    )


@pytest.mark.parametrize("spec_name", ["eg_py_own", "kl_py_legacy", "kl_py_plain"])
def test_eg_itests_python(request, paths, eg_server, spec_name):
    if eg_server.specs[spec_name].ours:
        request.getfixturevalue("launcher")
    proc = run_itests(
        paths,
        eg_server,
        "test_python_kernel.py",
        "TestPythonKernelLocal or TestPythonKernelDistributed",
        {"PYTHON_KERNEL_LOCAL_NAME": spec_name, "PYTHON_KERNEL_DISTRIBUTED_NAME": spec_name},
    )
    _check(proc, 10)


def test_eg_itests_r(launcher, paths, eg_server):
    proc = run_itests(paths, eg_server, "test_r_kernel.py", "TestRKernelLocal", {"R_KERNEL_LOCAL_NAME": "kl_ir"})
    _check(proc, 4)
