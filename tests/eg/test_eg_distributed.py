"""EG 3.3.0 + DistributedProcessProxy on localhost: start, 1+1, interrupt, restart, DELETE,
and no leftover processes — for our launcher (both option forms, Python and IRkernel) and for
EG's own launch_ipykernel.py (the reference that proves the harness itself)."""

import pytest

from support.kernels import run_lifecycle


def test_eg_own_launcher_python(eg_server, failure_context):
    """Reference: EG's unmodified launch_ipykernel.py (from the 3.3.0 sdist)."""
    run_lifecycle(eg_server, eg_server.specs["eg_py_own"], failure_context, check_reported_pid=True)


@pytest.mark.parametrize("spec_name", ["kl_py_legacy", "kl_py_plain"])
def test_kernel_launcher_python(launcher, eg_server, failure_context, spec_name):
    run_lifecycle(eg_server, eg_server.specs[spec_name], failure_context, check_reported_pid=True)


def test_kernel_launcher_irkernel(launcher, eg_server, failure_context):
    run_lifecycle(eg_server, eg_server.specs["kl_ir"], failure_context, check_reported_pid=True)


@pytest.mark.parametrize("spec_name", ["gen_kl_py", "gen_kl_ir"])
def test_generated_kernelspec(launcher, eg_server, failure_context, spec_name):
    """A kernelspec written by `kernel-launcher kernelspec install --for eg --mode local`
    (DistributedProcessProxy, remote_hosts localhost) runs the full lifecycle under real EG."""
    spec = eg_server.specs[spec_name]
    assert spec.metadata["process_proxy"]["config"] == {"remote_hosts": "localhost"}, spec.metadata
    run_lifecycle(eg_server, spec, failure_context, check_reported_pid=True)
