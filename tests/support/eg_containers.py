"""What the Enterprise Gateway container tests (tests/eg/test_eg_docker.py, test_eg_swarm.py,
test_eg_k8s_pod.py) share: our kernel images (built by images/<name>/build.sh), kernelspecs that
run EG's own container launchers, Docker look-ups through the docker SDK (venv-eg has the same
docker 7.2.0 EG uses), and a single-node swarm that is left again only when the test made it.

Every container, service and network a test creates is named with NAME_PREFIX, and only those are
removed; everything else on the Docker host belongs to someone else."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parents[2]
NAME_PREFIX = "kl-egc"

# Our kernel images and what a cell in them must answer. Only those whose build script exists in
# the tree are tested (see images_in_tree); the others are built on another branch.
#   language: the kernelspec's "language" (EG sets KERNEL_LANGUAGE from it; the image's launcher
#             picks its default kernel command from it)
@dataclass(frozen=True)
class KernelImage:
    name: str
    language: str
    cell: str
    expect: str
    sleep: str  # a cell that prints "begin" and then sleeps, for the interrupt check
    # what the interrupted cell reports (ipykernel: a KeyboardInterrupt error); None where the
    # kernel just ends the cell (IRkernel)
    interrupted: str | None = None
    # Spark images: the kernelspec passes --RemoteProcessProxy.spark-context-initialization-mode
    # MODE, as EG's spark_* kernelspecs do (lazy for Python, eager for Scala). It has to:
    # launch_docker.py and launch_kubernetes.py always put KERNEL_SPARK_CONTEXT_INIT_MODE in the
    # container's environment (their argparse default is "none"), which overrides the image's.
    spark_mode: str | None = None


KNOWN_IMAGES = {
    "python-kernel": KernelImage(
        "python-kernel",
        "python",
        "6*7",
        "42",
        "print('begin', flush=True)\nimport time\ntime.sleep(600)",
        "KeyboardInterrupt",
    ),
    "r-kernel": KernelImage(
        "r-kernel", "r", "6*7", "42", "cat('begin\\n'); flush(stdout()); Sys.sleep(600)"
    ),
    # The Spark images' cell runs a Spark job, so it proves the SparkContext exists and it waits
    # for the context's start-up. Scala is eager, as in EG's own spark_scala kernelspecs and the
    # image's default: an interrupt sent to Toree 0.5.0 (Java 17) while a lazy SparkContext is
    # still starting is lost (its "SIGINT handler" thread dies with an
    # ExceptionInInitializerError, a null context class loader) and the cell runs on.
    "spark-python-kernel": KernelImage(
        "spark-python-kernel",
        "python",
        "sc.parallelize([6]).map(lambda x: x * 7).first()",
        "42",
        "print('begin', flush=True)\nimport time\ntime.sleep(600)",
        "KeyboardInterrupt",
        spark_mode="lazy",
    ),
    "scala-kernel": KernelImage(
        "scala-kernel",
        "scala",
        "sc.parallelize(Seq(6)).map(_ * 7).first",
        "42",
        'println("begin"); Thread.sleep(600000)',
        spark_mode="eager",
    ),
}


# EG's own itests per image: (file, -k selector, tests it selects, the env variables naming
# the kernelspec, extra env). Spark images run the Spark classes ("client" mode: the driver is
# in the kernel's container, master local[*]), which add spark.app.id, deploy mode, master and
# version checks to the base ones.
SPARK_EXPECT = {
    "EXPECTED_APPLICATION_ID": "local-",
    "EXPECTED_DEPLOY_MODE": "client",
    "EXPECTED_SPARK_MASTER": "local",
    "EXPECTED_SPARK_VERSION": "3\\.5\\.",
}
ITESTS = {
    "python-kernel": (
        "test_python_kernel.py",
        "TestPythonKernelLocal or TestPythonKernelDistributed",
        10,
        ["PYTHON_KERNEL_LOCAL_NAME", "PYTHON_KERNEL_DISTRIBUTED_NAME"],
        {},
    ),
    "r-kernel": ("test_r_kernel.py", "TestRKernelLocal", 4, ["R_KERNEL_LOCAL_NAME"], {}),
    "spark-python-kernel": (
        "test_python_kernel.py",
        "TestPythonKernelClient",
        9,
        ["PYTHON_KERNEL_CLIENT_NAME"],
        SPARK_EXPECT,
    ),
    "scala-kernel": ("test_scala_kernel.py", "TestScalaKernelClient", 8, ["SCALA_KERNEL_CLIENT_NAME"], SPARK_EXPECT),
}


def run_image_itests(py_eg: str, eg_sdist, base_url: str, image: str, what: str) -> None:
    """EG's own itests for `image` against the gateway at base_url. The kernel's hostname is its
    container (or service) name, KERNEL_USERNAME-KERNEL_ID, and the itests' client sends
    KERNEL_USERNAME=kl-e2e."""
    from support.kernels import check_itests, run_eg_itests

    test_file, selector, expected, name_vars, extra = ITESTS[image]
    env = {v: spec_name(image) for v in name_vars}
    env.update(extra)
    env["ITEST_HOSTNAME_PREFIX"] = "kl-e2e-"
    env["KERNEL_LAUNCH_TIMEOUT"] = "180"
    env["REQUEST_TIMEOUT"] = "120"  # a JVM kernel's first cells take longer than the default 30 s
    proc = run_eg_itests(py_eg, eg_sdist, base_url.removeprefix("http://"), test_file, selector, env, timeout=1800)
    check_itests(proc, expected, what=f"EG itests {test_file} -k '{selector}' on {image} via {what}")


def images_in_tree() -> list[str]:
    """The known images whose images/<name>/build.sh is in this checkout."""
    return [n for n in KNOWN_IMAGES if (REPO / "images" / n / "build.sh").is_file()]


_built: dict[str, str] = {}


def build_image(name: str) -> str:
    """Run images/<name>/build.sh (cached by the script itself) and return the image reference it
    prints as its last stdout line. Once per test session."""
    if name not in _built:
        script = REPO / "images" / name / "build.sh"
        proc = subprocess.run([str(script)], cwd=REPO, capture_output=True, text=True, timeout=3600)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"{script} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        _built[name] = lines[-1].strip()
    return _built[name]


def docker_client() -> docker.DockerClient:
    return docker.from_env(timeout=120)


def bridge_gateway(client: docker.DockerClient) -> str:
    """The host's address on Docker's default bridge (docker0): containers on it reach the host
    there, and the host reaches them on their 172.17.x addresses."""
    attrs = client.networks.get("bridge").attrs
    for entry in attrs["IPAM"]["Config"]:
        if entry.get("Gateway"):
            return entry["Gateway"]
    # Some daemons leave Gateway out of the default bridge's IPAM config: read the address of the
    # bridge interface itself (docker0 unless configured otherwise).
    dev = attrs.get("Options", {}).get("com.docker.network.bridge.name", "docker0")
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", dev], capture_output=True, text=True)
    for word_list in (line.split() for line in out.stdout.splitlines()):
        if "inet" in word_list:
            return word_list[word_list.index("inet") + 1].split("/")[0]
    raise RuntimeError(f"no IPv4 address found for Docker's default bridge ({dev}): {out.stdout}{out.stderr}")


# ----------------------------------------------------------------------------- kernelspecs

DOCKER_PROXY = "enterprise_gateway.services.processproxies.docker_swarm.DockerProcessProxy"
SWARM_PROXY = "enterprise_gateway.services.processproxies.docker_swarm.DockerSwarmProcessProxy"


def launch_docker_script(eg_sdist: Path) -> Path:
    return Path(eg_sdist) / "etc/kernel-launchers/docker/scripts/launch_docker.py"


def write_container_kernelspecs(root: Path, python: str, eg_sdist: Path, proxy_class: str, images: dict) -> Path:
    """One kernelspec per image (named kl_<image name with _>), each running EG's own
    launch_docker.py with `python` (an interpreter that has the docker SDK), exactly the argv of
    EG's python_docker kernelspec but for the interpreter and script paths. Returns the
    JUPYTER_PATH entry."""
    script = launch_docker_script(eg_sdist)
    if not script.is_file():
        raise FileNotFoundError(f"{script} is missing: run scripts/setup-env.sh (it unpacks EG's sdist)")
    kernels = root / "share" / "jupyter" / "kernels"
    for name, ref in images.items():
        img = KNOWN_IMAGES[name]
        d = kernels / spec_name(name)
        d.mkdir(parents=True, exist_ok=True)
        spec = {
            "display_name": f"{name} ({proxy_class.rsplit('.', 1)[-1]})",
            "language": img.language,
            "metadata": {"process_proxy": {"class_name": proxy_class, "config": {"image_name": ref}}},
            "env": {},
            "argv": [
                python,
                str(script),
                "--RemoteProcessProxy.kernel-id",
                "{kernel_id}",
                "--RemoteProcessProxy.port-range",
                "{port_range}",
                "--RemoteProcessProxy.response-address",
                "{response_address}",
                "--RemoteProcessProxy.public-key",
                "{public_key}",
                *(["--RemoteProcessProxy.spark-context-initialization-mode", img.spark_mode] if img.spark_mode else []),
            ],
        }
        (d / "kernel.json").write_text(json.dumps(spec, indent=2))
    return root / "share" / "jupyter"


def spec_name(image_name: str) -> str:
    return "kl_" + image_name.replace("-", "_")


# ----------------------------------------------------------------------------- leftovers


def kernel_containers(client: docker.DockerClient, kernel_id: str) -> list:
    """Containers (any state) labelled with the kernel's id, as EG's launch_docker.py labels them
    (and as the swarm labels a service's task containers). The Docker SDK lists ids, then
    inspects each: one removed in between (a Swarm task's container, a kernel shutting down) is
    left out rather than raising NotFound."""
    return client.containers.list(all=True, filters={"label": f"kernel_id={kernel_id}"}, ignore_removed=True)


def kernel_services(client: docker.DockerClient, kernel_id: str) -> list:
    if not swarm_active(client):
        return []
    return client.services.list(filters={"label": f"kernel_id={kernel_id}"})


def wait_no_kernel_resources(client: docker.DockerClient, kernel_id: str, timeout: float = 60) -> list[str]:
    """Wait until no container or service of the kernel exists; return what is left (names)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [f"container {c.name} ({c.status})" for c in kernel_containers(client, kernel_id)]
        left += [f"service {s.name}" for s in kernel_services(client, kernel_id)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def remove_kernel_resources(client: docker.DockerClient, kernel_id: str) -> None:
    """Clean-up after a failed test: remove what EG left for this kernel id (ids are ours)."""
    for s in kernel_services(client, kernel_id):
        try:
            s.remove()
        except docker.errors.NotFound:
            pass
    for c in kernel_containers(client, kernel_id):
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass


# ----------------------------------------------------------------------------- swarm


def swarm_active(client: docker.DockerClient) -> bool:
    return client.info().get("Swarm", {}).get("LocalNodeState") == "active"


class SingleNodeSwarm:
    """A swarm to run services on: the active one if this host is already a manager, else a new
    single-node swarm (advertised on 127.0.0.1) that close() leaves again. A swarm someone else
    made is never left."""

    def __init__(self, client: docker.DockerClient):
        self.client = client
        self.created = False
        info = client.info().get("Swarm", {})
        state = info.get("LocalNodeState")
        if state == "active":
            if not info.get("ControlAvailable"):
                raise RuntimeError(
                    "this Docker host is a swarm worker, not a manager: services cannot be created here "
                    "(run the tests on a manager, or on a host outside any swarm)"
                )
            return
        if state not in ("inactive", "", None):
            raise RuntimeError(f"the Docker host's swarm state is {state!r}; wait until it settles or leave it")
        subprocess.run(
            ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True, text=True
        )
        self.created = True

    def close(self) -> None:
        if self.created:
            subprocess.run(["docker", "swarm", "leave", "--force"], check=False, capture_output=True)
            self.created = False


def unique_name(what: str) -> str:
    return f"{NAME_PREFIX}-{what}-{uuid.uuid4().hex[:8]}"


def interpreter_prefix(python: str) -> str:
    """sys.base_prefix of a venv's interpreter: the directory its python symlink leads into, which
    a container needs mounted (at the same path) to run the venv."""
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.base_prefix)"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def venv_root(python: str) -> str:
    """The venv directory of a venv interpreter path (…/venv/bin/python -> …/venv)."""
    return str(Path(python).parent.parent)


# ----------------------------------------------------------------------------- scenarios


# What Toree's REPL prints when it re-binds `lastException` after an interrupt.
TOREE_REBIND = "lastException = null"


def run_container_lifecycle(rest, client: docker.DockerClient, spec: str, img: KernelImage, swarm: bool) -> None:
    """Through EG's REST and WebSocket API: start the kernel, see its container (or service) with
    EG's kernel_id label, run a cell, interrupt a sleeping cell and check the kernel survived,
    DELETE it, and check that no container or service of it is left."""
    from support.kernels import EXEC_TIMEOUT

    r = rest.start_kernel(spec, {"KERNEL_USERNAME": NAME_PREFIX, "KERNEL_LAUNCH_TIMEOUT": "180"})
    assert r.status_code == 201, f"POST /api/kernels {spec}: HTTP {r.status_code}: {r.text[:2000]}"
    kid = r.json()["id"]
    deleted = False
    try:
        if swarm:
            services = kernel_services(client, kid)
            assert len(services) == 1, f"expected one swarm service labelled kernel_id={kid}, got {services}"
            assert services[0].name == f"{NAME_PREFIX}-{kid}", services[0].name
            # launch_docker.py creates the service as KERNEL_UID (EG's default 1000, jovyan)
            cspec = services[0].attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
            assert cspec.get("User") == "1000", cspec
        else:
            running = [c for c in kernel_containers(client, kid) if c.status == "running"]
            assert len(running) == 1, f"expected one running container labelled kernel_id={kid}, got {running}"
            assert running[0].name == f"{NAME_PREFIX}-{kid}", running[0].name
            # launch_docker.py runs the container as KERNEL_UID (EG's default 1000, jovyan)
            assert running[0].attrs["Config"]["User"] == "1000", running[0].attrs["Config"]["User"]

        ch = rest.channels(kid)
        try:
            ch.kernel_info(timeout=180)
            res = ch.execute(img.cell, timeout=180)
            assert res.status == "ok" and img.expect in res.text, f"{img.cell!r} -> {res}"

            mid = ch.submit(img.sleep)
            partial = ch.collect(mid, until_text="begin", timeout=EXEC_TIMEOUT)
            assert "begin" in partial.text, partial
            ri = rest.interrupt(kid)
            assert ri.status_code == 204, f"interrupt: HTTP {ri.status_code}: {ri.text[:1000]}"
            # The cell ends (its reply arrives) long before its 600 s sleep would.
            res = wait_reply(ch, mid, EXEC_TIMEOUT, until_text=img.interrupted)
            assert res.status is not None, f"interrupted cell got no reply: {res}"
            if img.interrupted:
                assert img.interrupted in (res.ename or "") + res.text, f"interrupted cell: {res}"
            res = ch.execute(img.cell, timeout=EXEC_TIMEOUT)
            if img.expect not in res.text and res.text.strip() == TOREE_REBIND:
                # Toree 0.5.0 quirk: the first cell after an interrupt sometimes answers with
                # only its REPL's re-binding of `lastException` and drops the cell's own value
                # (seen once in ~20 runs). The kernel is fine: the same cell asked again answers.
                res = ch.execute(img.cell, timeout=EXEC_TIMEOUT)
            assert res.status == "ok" and img.expect in res.text, f"after interrupt {img.cell!r} -> {res}"
        finally:
            ch.close()

        rd = rest.delete(kid)
        deleted = True
        assert rd.status_code == 204, f"DELETE: HTTP {rd.status_code}: {rd.text[:2000]}"
        left = wait_no_kernel_resources(client, kid)
        assert not left, f"left after DELETE of kernel {kid}: {left}"
    finally:
        if not deleted:
            try:
                rest.delete(kid)
            except Exception:
                pass
        remove_kernel_resources(client, kid)


def wait_reply(ch, mid: str, timeout: float, until_text: str | None = None):
    """Collect request `mid`'s output until its execute_reply has arrived (and, with until_text,
    that text too). Unlike KernelChannels.collect this does not wait for the iopub idle status:
    Toree sends no idle status for a cell it interrupted."""
    from support.kernels import ExecResult

    res = ExecResult()
    deadline = time.monotonic() + timeout
    while res.status is None or (until_text and until_text not in (res.ename or "") + res.text):
        m = ch.recv(deadline)
        if m is None:
            raise TimeoutError(f"execute {mid}: no reply{' and ' + until_text if until_text else ''} within {timeout}s: {res}")
        if m.get("parent_header", {}).get("msg_id") != mid:
            continue
        mt, c = m.get("msg_type"), m.get("content", {})
        if mt == "stream":
            res.text += c.get("text", "")
        elif mt == "error":
            res.ename, res.evalue = c.get("ename"), c.get("evalue")
            res.text += "\n".join(c.get("traceback", []))
        elif mt == "execute_reply":
            res.status = c.get("status")
        res.outputs.append(m)
    return res


def check_prohibited_uid(rest, client: docker.DockerClient, spec: str) -> None:
    """KERNEL_UID=0 is refused by EG (EG_PROHIBITED_UIDS defaults to 0) with a 403 that names
    the variable, before anything is launched."""
    before = eg_resources(client)
    r = rest.start_kernel(spec, {"KERNEL_USERNAME": NAME_PREFIX, "KERNEL_UID": "0"})
    assert r.status_code == 403, f"KERNEL_UID=0 should be refused with 403: HTTP {r.status_code}: {r.text[:2000]}"
    text = r.text
    assert "UID value of '0'" in text and "EG_PROHIBITED_UIDS" in text, text[:2000]
    r = rest.start_kernel(spec, {"KERNEL_USERNAME": NAME_PREFIX, "KERNEL_GID": "0"})
    assert r.status_code == 403 and "EG_PROHIBITED_GIDS" in r.text, f"KERNEL_GID=0: HTTP {r.status_code}: {r.text[:2000]}"
    r = rest.start_kernel(spec, {"KERNEL_USERNAME": NAME_PREFIX, "KERNEL_UID": "jovyan"})
    assert r.status_code == 403 and "not a valid integer" in r.text, f"KERNEL_UID=jovyan: HTTP {r.status_code}: {r.text[:2000]}"
    after = eg_resources(client)
    assert after <= before, f"refused starts left containers or services: {after - before}"
    kernels = rest_list_kernels(rest)
    assert kernels == [], f"refused starts left kernels in EG: {kernels}"


def eg_resources(client: docker.DockerClient) -> set[str]:
    """Ids of every container and swarm service carrying EG's app=enterprise-gateway label."""
    # ignore_removed: see kernel_containers (CI once saw NotFound for a task's container here).
    found = {
        c.id
        for c in client.containers.list(all=True, filters={"label": "app=enterprise-gateway"}, ignore_removed=True)
    }
    if swarm_active(client):
        found |= {s.id for s in client.services.list(filters={"label": "app=enterprise-gateway"})}
    return found


def wait_new_eg_resources_gone(client: docker.DockerClient, before: set[str], timeout: float = 60) -> set[str]:
    """Wait until no EG-labelled container or service exists that was not in `before`; return
    the ids still there."""
    deadline = time.monotonic() + timeout
    while True:
        left = eg_resources(client) - before
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def rest_list_kernels(rest) -> list:
    import requests

    r = requests.get(f"{rest.base_url}/api/kernels", headers=rest.headers, timeout=30)
    r.raise_for_status()
    return r.json()


def check_bad_image(rest, client: docker.DockerClient, spec: str) -> None:
    """A client may send KERNEL_IMAGE (EG passes every KERNEL_* variable on). One that is not an
    image reference is refused by EG's launch_docker.py before Docker is asked for anything, and
    EG answers the start with an error instead of waiting for its launch timeout."""
    before = eg_resources(client)
    r = rest.start_kernel(spec, {"KERNEL_USERNAME": NAME_PREFIX, "KERNEL_IMAGE": "bad image;rm -rf /"})
    assert r.status_code >= 500, f"a bad KERNEL_IMAGE should fail the start: HTTP {r.status_code}: {r.text[:2000]}"
    assert "Error occurred during launch" in r.text, r.text[:2000]
    left = wait_new_eg_resources_gone(client, before)
    assert not left, f"a refused KERNEL_IMAGE left containers or services: {left}"
    assert rest_list_kernels(rest) == [], "the failed start left a kernel in EG"
