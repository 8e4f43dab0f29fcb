"""Enterprise Gateway 3.3.0's DockerSwarmProcessProxy running our kernel images as swarm services.

DockerSwarmProcessProxy has launch_docker.py create one service per kernel (services.create on
EG_DOCKER_NETWORK, endpoint mode dnsrr, restart condition none) and connects to the address of
the task's first network attachment. Overlay addresses are not routable from the host, so EG runs
in a container on an attachable overlay network this module creates:

  * image: our python-kernel image with --entrypoint (it has the shared libraries the host's
    interpreter needs; nothing is pulled), as root so it can use the Docker socket;
  * venv-eg, the interpreter it links to (sys.base_prefix), EG's sdist and the kernelspecs are
    mounted read-only at their host paths, so the kernelspecs' argv is the same as on the host;
  * EG's port is published on 127.0.0.1 only.

A single-node swarm is used if this host already runs one (then it is not left); otherwise one
is created (docker swarm init --advertise-addr 127.0.0.1) and left at the end.

Checked per image: a cell, interrupt, DELETE and that no service or container of the kernel is
left; EG's own itests; EG's refusal of KERNEL_UID=0 with nothing started.
"""

from __future__ import annotations

import time

import pytest
import requests

from support import eg_containers as ec
from support.kernels import JupyterRest

IMAGES = ec.images_in_tree()
EG_PORT_IN_CONTAINER = 8888
EG_RESPONSE_PORT = 8877


@pytest.fixture(scope="module")
def docker_client():
    client = ec.docker_client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def swarm(docker_client):
    s = ec.SingleNodeSwarm(docker_client)
    yield s
    s.close()


@pytest.fixture(scope="module")
def overlay(docker_client, swarm):
    """An attachable overlay network, so a plain container (EG) and the kernel services share it."""
    net = docker_client.networks.create(ec.unique_name("net"), driver="overlay", attachable=True)
    yield net.name
    # The services and EG's container are gone by now (their fixtures end first); removal of a
    # network whose last task just ended can race the swarm's own clean-up, so retry briefly.
    deadline = time.monotonic() + 60
    while True:
        try:
            net.remove()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture(scope="module")
def images():
    return {name: ec.build_image(name) for name in IMAGES}


@pytest.fixture(scope="module")
def eg_swarm(paths, images, docker_client, overlay, tmp_path_factory):
    """EG 3.3.0 in a container on the overlay network; yields (base_url, container)."""
    sd = tmp_path_factory.mktemp("eg-swarm")
    jp = ec.write_container_kernelspecs(sd / "specs", paths.py_eg, paths.eg_sdist, ec.SWARM_PROXY, images)
    name = ec.unique_name("eg")
    venv = ec.venv_root(paths.py_eg)
    prefix = ec.interpreter_prefix(paths.py_eg)
    volumes = {
        venv: {"bind": venv, "mode": "ro"},
        prefix: {"bind": prefix, "mode": "ro"},
        str(paths.eg_sdist): {"bind": str(paths.eg_sdist), "mode": "ro"},
        str(jp): {"bind": str(jp), "mode": "ro"},
        "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
    }
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "JUPYTER_PATH": str(jp),
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYTHONUNBUFFERED": "1",
        "EG_DOCKER_NETWORK": overlay,
        # Bound by EG and sent to the kernels as RESPONSE_ADDRESS: the container's own name,
        # which Docker's embedded DNS resolves to its overlay address for EG (bind) and for the
        # kernel services on the same network (our launcher accepts a host name).
        "EG_RESPONSE_IP": name,
        "EG_RESPONSE_PORT": str(EG_RESPONSE_PORT),
        "EG_LIST_KERNELS": "True",
        "EG_KERNEL_LAUNCH_TIMEOUT": "180",
        # launch_docker.py pops PATH from its environment without a default (see test_eg_docker.py).
        "EG_INHERITED_ENVS": "PATH",
    }
    entry = [
        f"{venv}/bin/python",
        f"{venv}/bin/jupyter-enterprisegateway",
        "--EnterpriseGatewayApp.ip=0.0.0.0",
        f"--EnterpriseGatewayApp.port={EG_PORT_IN_CONTAINER}",
        "--EnterpriseGatewayApp.port_retries=0",
        "--log-level=DEBUG",
    ]
    container = docker_client.containers.run(
        images["python-kernel"],
        entrypoint=entry,
        command=[],
        name=name,
        hostname=name,
        user="0:0",
        working_dir="/tmp",
        environment=env,
        volumes=volumes,
        network=overlay,
        ports={f"{EG_PORT_IN_CONTAINER}/tcp": ("127.0.0.1", None)},
        labels={"org.jupyter.gateway-lite.test": ec.NAME_PREFIX},
        detach=True,
    )
    try:
        base_url = _wait_ready(container)
        yield base_url, container
    finally:
        try:
            (sd / "eg.log").write_bytes(container.logs())
        except Exception:
            pass
        container.remove(force=True)


def _wait_ready(container, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        container.reload()
        if container.status not in ("created", "running"):
            break
        bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get(f"{EG_PORT_IN_CONTAINER}/tcp")
        if bindings:
            url = f"http://127.0.0.1:{bindings[0]['HostPort']}"
            try:
                if requests.get(f"{url}/api", timeout=5).status_code == 200:
                    return url
            except requests.RequestException as exc:
                last = exc
        time.sleep(0.5)
    logs = container.logs().decode(errors="replace")[-6000:]
    pytest.fail(f"EG in container {container.name} not ready ({container.status}, {last}):\n{logs}", pytrace=False)


def _eg_log(container, n: int = 60) -> str:
    return "\n".join(container.logs().decode(errors="replace").splitlines()[-n:])


def test_swarm_network_is_overlay(docker_client, overlay, eg_swarm):
    """EG's container sits on the test's overlay network (so kernel services can reach it)."""
    _, container = eg_swarm
    container.reload()
    assert overlay in container.attrs["NetworkSettings"]["Networks"], container.attrs["NetworkSettings"]["Networks"]
    assert docker_client.networks.get(overlay).attrs["Driver"] == "overlay"


@pytest.mark.parametrize("image", IMAGES)
def test_swarm_lifecycle(eg_swarm, docker_client, image):
    base_url, container = eg_swarm
    try:
        ec.run_container_lifecycle(
            JupyterRest(base_url), docker_client, ec.spec_name(image), ec.KNOWN_IMAGES[image], swarm=True
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- EG log tail ---\n{_eg_log(container)}") from None


@pytest.mark.parametrize("image", [i for i in IMAGES if i in ec.ITESTS])
def test_swarm_eg_itests(paths, eg_swarm, docker_client, image):
    """EG's own itests (support.eg_containers.ITESTS) against the image's kernelspec."""
    base_url, container = eg_swarm
    before = ec.eg_resources(docker_client)
    try:
        ec.run_image_itests(paths.py_eg, paths.eg_sdist, base_url, image, "DockerSwarmProcessProxy")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- EG log tail ---\n{_eg_log(container)}") from None
    left = ec.wait_new_eg_resources_gone(docker_client, before)
    assert not left, f"the itests' kernels left services or containers: {left}"


def test_swarm_prohibited_uid(eg_swarm, docker_client):
    base_url, _ = eg_swarm
    ec.check_prohibited_uid(JupyterRest(base_url), docker_client, ec.spec_name("python-kernel"))
