"""Enterprise Gateway 3.3.0's DockerProcessProxy running our kernel images.

EG runs on this host (venv-eg); each kernelspec's argv is EG's own launch_docker.py from the sdist
(interpreter: venv-eg's python, which has the docker SDK EG needs), and its
metadata.process_proxy.config.image_name is one of our images (images/<name>/build.sh). EG
(DockerProcessProxy) sets EG_DOCKER_MODE=docker, so launch_docker.py does containers.run() on the
default bridge network as KERNEL_UID (1000) with group 100, labelled kernel_id=<id>. The kernel
reaches EG's response listener at the bridge's gateway address (EG_RESPONSE_IP), and EG reaches
the kernel on its 172.17.x address.

Checked per image: EG's own itests (Python and R classes, where the image is there), a cell,
interrupt, DELETE, and that no container with the kernel's label is left. Also EG's refusal of
KERNEL_UID=0 / KERNEL_GID=0 / a non-numeric uid, with nothing started.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support import eg_containers as ec
from support.kernels import JupyterRest, free_port, kill_tree, wait_http_ok

IMAGES = ec.images_in_tree()


def eg_env(sd, jupyter_path, response_ip: str) -> dict:
    """A small, explicit environment for EG. EG hands the kernel env (KERNEL_* and what is
    inherited) to launch_docker.py, which copies all of it into the container, so nothing of the
    test runner's own environment is passed on."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(sd),
        "LANG": "C.UTF-8",
        "JUPYTER_PATH": str(jupyter_path),
        "JUPYTER_CONFIG_DIR": str(sd / "config"),
        "JUPYTER_DATA_DIR": str(sd / "data"),
        "JUPYTER_RUNTIME_DIR": str(sd / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYTHONUNBUFFERED": "1",
        "EG_RESPONSE_IP": response_ip,
        "EG_RESPONSE_PORT": str(free_port()),
        "EG_DOCKER_NETWORK": "bridge",
        "EG_LIST_KERNELS": "True",
        "EG_KERNEL_LAUNCH_TIMEOUT": "180",
        # Interop quirk: EG gives a kernel only KERNEL_*, the kernelspec's env and
        # EG_INHERITED_ENVS, and launch_docker.py does os.environ.pop("PATH") without a default,
        # so it dies with KeyError: 'PATH' unless PATH is inherited (EG's Helm chart sets
        # EG_INHERITED_ENVS=PATH in deployment.extraEnv). The container then uses the image's
        # own PATH.
        "EG_INHERITED_ENVS": "PATH",
    }


@pytest.fixture(scope="module")
def docker_client():
    client = ec.docker_client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def images():
    return {name: ec.build_image(name) for name in IMAGES}


@pytest.fixture(scope="module")
def eg_docker(paths, images, docker_client, tmp_path_factory):
    """EG 3.3.0 on 127.0.0.1 with one DockerProcessProxy kernelspec per image."""
    sd = tmp_path_factory.mktemp("eg-docker")
    jp = ec.write_container_kernelspecs(sd / "specs", paths.py_eg, paths.eg_sdist, ec.DOCKER_PROXY, images)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = eg_env(sd, jp, ec.bridge_gateway(docker_client))
    log = open(sd / "eg.log", "wb")  # noqa: SIM115 - closed below
    cmd = [
        str(Path(paths.py_eg).parent / "jupyter-enterprisegateway"),
        "--EnterpriseGatewayApp.ip=127.0.0.1",
        f"--EnterpriseGatewayApp.port={port}",
        "--EnterpriseGatewayApp.port_retries=0",
        "--log-level=DEBUG",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=sd)
    try:
        wait_http_ok(f"{base_url}/api", proc, timeout=90)
    except Exception as exc:
        kill_tree(proc)
        pytest.fail(f"EG did not start: {exc}\n{(sd / 'eg.log').read_text()[-4000:]}", pytrace=False)
    yield base_url, sd / "eg.log"
    kill_tree(proc)
    log.close()


def _log_tail(path, n=60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def test_images_present():
    """Every known image has its build script in the tree, so none drops out of these tests."""
    assert IMAGES == list(ec.KNOWN_IMAGES), IMAGES


@pytest.mark.parametrize("image", IMAGES)
def test_docker_lifecycle(eg_docker, docker_client, image):
    base_url, log = eg_docker
    try:
        ec.run_container_lifecycle(
            JupyterRest(base_url), docker_client, ec.spec_name(image), ec.KNOWN_IMAGES[image], swarm=False
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- EG log tail ---\n{_log_tail(log)}") from None


@pytest.mark.parametrize("image", [i for i in IMAGES if i in ec.ITESTS])
def test_docker_eg_itests(paths, eg_docker, docker_client, image):
    """EG's own itests (support.eg_containers.ITESTS) against the image's kernelspec."""
    base_url = eg_docker[0]
    before = ec.eg_resources(docker_client)
    ec.run_image_itests(paths.py_eg, paths.eg_sdist, base_url, image, "DockerProcessProxy")
    left = ec.wait_new_eg_resources_gone(docker_client, before)
    assert not left, f"the itests' kernels left containers: {left}"


def test_docker_prohibited_uid(eg_docker, docker_client):
    base_url, _ = eg_docker
    ec.check_prohibited_uid(JupyterRest(base_url), docker_client, ec.spec_name("python-kernel"))


def test_docker_bad_kernel_image(eg_docker, docker_client):
    base_url, log = eg_docker
    ec.check_bad_image(JupyterRest(base_url), docker_client, ec.spec_name("python-kernel"))
    # EG's log carries launch_docker.py's own message naming the variable.
    assert "KERNEL_IMAGE contains invalid characters" in log.read_text(errors="replace")
