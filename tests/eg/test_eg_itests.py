"""Enterprise Gateway's own integration tests (enterprise_gateway/itests from the 3.3.0 sdist,
downloaded by scripts/setup-env.sh) run unmodified against the EG fixture.

Only the classes that need no Spark/YARN are selected:
  test_python_kernel.py: TestPythonKernelLocal (PYTHON_KERNEL_LOCAL_NAME) and
                         TestPythonKernelDistributed (PYTHON_KERNEL_DISTRIBUTED_NAME),
                         5 tests each: hostname, hello world, restart, interrupt, scope
  test_r_kernel.py:      TestRKernelLocal (R_KERNEL_LOCAL_NAME), 4 tests
The runner (support.kernels.run_eg_itests) is shared with tests/gateway/test_eg_itests.py, which
runs the same classes against gateway-lite.
"""

import pytest

from support.kernels import ITEST_CLASSES, check_itests, run_eg_itests


def run_itests(paths, eg_server, lang: str, env_names: dict):
    test_file, selector, expected = ITEST_CLASSES[lang]
    proc = run_eg_itests(
        paths.py_eg, paths.eg_sdist, eg_server.base_url.removeprefix("http://"), test_file, selector, env_names
    )
    check_itests(proc, expected)


@pytest.mark.parametrize("spec_name", ["eg_py_own", "kl_py_legacy", "kl_py_plain"])
def test_eg_itests_python(request, paths, eg_server, spec_name):
    if eg_server.specs[spec_name].ours:
        request.getfixturevalue("launcher")
    run_itests(
        paths,
        eg_server,
        "python",
        {"PYTHON_KERNEL_LOCAL_NAME": spec_name, "PYTHON_KERNEL_DISTRIBUTED_NAME": spec_name},
    )


def test_eg_itests_r(launcher, paths, eg_server):
    run_itests(paths, eg_server, "r", {"R_KERNEL_LOCAL_NAME": "kl_ir"})
