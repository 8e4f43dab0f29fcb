"""gateway_provisioners 0.5.0 (DistributedProvisioner on localhost) inside Jupyter Server 2,
driven through Jupyter Server's REST + WebSocket API: start, 1+1, interrupt, restart,
shutdown, no leftover processes. GP passes the plain option form and always fills
{transport_encryption} (with "" when CurveZMQ is not enabled)."""

import pytest

from support.kernels import run_lifecycle


def test_gp_own_launcher_python(gp_server, failure_context):
    """Reference: gateway_provisioners' own launch_ipykernel.py from the installed wheel."""
    run_lifecycle(gp_server, gp_server.specs["gp_py_own"], failure_context, check_reported_pid=False)


@pytest.mark.parametrize("spec_name", ["gp_kl_py", "gp_kl_ir"])
def test_gp_kernel_launcher(launcher, gp_server, failure_context, spec_name):
    run_lifecycle(gp_server, gp_server.specs[spec_name], failure_context, check_reported_pid=False)


def test_gp_generated_kernelspec(launcher, gp_server, failure_context):
    """A kernelspec written by `kernel-launcher kernelspec install --for gp --mode local`
    (distributed-provisioner, plain options with {transport_encryption}) under real GP 0.5."""
    spec = gp_server.specs["gen_gp_kl_py"]
    assert spec.metadata["kernel_provisioner"]["provisioner_name"] == "distributed-provisioner"
    run_lifecycle(gp_server, spec, failure_context, check_reported_pid=False)
