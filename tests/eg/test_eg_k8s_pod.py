"""Our kernel images against Enterprise Gateway 3.3.0's Kubernetes contract, without Kubernetes.

A cluster cannot run here, so the part of EG's Kubernetes path that defines what a kernel image
gets is run for real and the resulting pod is run under Docker:

  1. EG's own launch_kubernetes.py (from the sdist, copied with its kernel-pod.yaml.j2 into a
     kernelspec-shaped directory so KERNEL_NAME comes out as on a cluster) runs in venv-eg with
     the arguments and KERNEL_* environment EG's KubernetesProcessProxy gives it, and
     --pod-template FILE: it renders the template with its own jinja2 set-up (yaml_safe filter,
     KERNEL_* -> kernel_* keywords) and extends the container's env with its environment exactly
     as before creating a pod, but writes the pod to FILE instead of calling the API server.
     (load_kube_config() still runs first, so a minimal kubeconfig is provided; nothing connects.)
  2. The pod's single container is run with Docker as a kubelet would: its image, env,
     command/args if set (else the image's entrypoint), workingDir, the pod's securityContext
     runAsUser/runAsGroup as --user and fsGroup as a supplementary group, the pod's name as
     hostname and its labels.
  3. The payload is received and decrypted by EG's own ResponseManager
     (helpers/eg_receive_payload.py), a jupyter_client connects with it and runs a cell, and a
     shutdown_request ends the kernel, which must end the container (as the pod would end).
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from support import eg_containers as ec
from support.kernels import free_port, kill_tree

HERE = Path(__file__).resolve().parent
IMAGES = ec.images_in_tree()
PORT_FIELDS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")

# A kubeconfig load_kube_config() accepts; the address is never contacted (--pod-template).
KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "none", "user": {"token": "unused"}}],
    "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
    "current-context": "none",
}


@pytest.fixture(scope="module")
def docker_client():
    client = ec.docker_client()
    yield client
    client.close()


def render_pod(paths, tmp: Path, image_name: str, image_ref: str, kid: str, response_address: str, public_key: str):
    """Run EG's launch_kubernetes.py with --pod-template and return the pod it wrote."""
    img = ec.KNOWN_IMAGES[image_name]
    spec = f"{ec.spec_name(image_name)}_kubernetes"
    scripts = tmp / "kernels" / spec / "scripts"
    scripts.mkdir(parents=True)
    src = Path(paths.eg_sdist) / "etc/kernel-launchers/kubernetes/scripts"
    for f in ("launch_kubernetes.py", "kernel-pod.yaml.j2"):
        shutil.copy(src / f, scripts / f)
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    pod_file = tmp / "pod.yaml"
    pod_name = f"{ec.NAME_PREFIX}-{kid}"
    # What EG 3.3.0's KubernetesProcessProxy puts in the launcher's environment (see its
    # launch_process and _determine_* methods and BaseProcessProxy.launch_process), with PATH
    # inherited (EG_INHERITED_ENVS) and KUBECONFIG standing in for the in-cluster config.
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "KUBECONFIG": str(kubeconfig),
        "KERNEL_USERNAME": ec.NAME_PREFIX,
        "KERNEL_LAUNCH_TIMEOUT": "180",
        "KERNEL_GATEWAY": "1",
        "KERNEL_IMAGE": image_ref,
        "KERNEL_EXECUTOR_IMAGE": image_ref,
        "KERNEL_UID": "1000",
        "KERNEL_GID": "100",
        "KERNEL_ID": kid,
        "KERNEL_LANGUAGE": img.language,
        "KERNEL_POD_NAME": pod_name,
        "KERNEL_NAMESPACE": f"{ec.NAME_PREFIX}-{kid}",
        "KERNEL_SERVICE_ACCOUNT_NAME": "default",
        "EG_MIN_PORT_RANGE_SIZE": "1000",
        "EG_MAX_PORT_RANGE_RETRIES": "5",
        "EG_IMPERSONATION_ENABLED": "False",
    }
    argv = [
        paths.py_eg,
        str(scripts / "launch_kubernetes.py"),
        "--RemoteProcessProxy.kernel-id",
        kid,
        "--RemoteProcessProxy.port-range",
        "0..0",
        "--RemoteProcessProxy.response-address",
        response_address,
        "--RemoteProcessProxy.public-key",
        public_key,
        *(["--RemoteProcessProxy.spark-context-initialization-mode", img.spark_mode] if img.spark_mode else []),
        "--pod-template",
        str(pod_file),
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"launch_kubernetes.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    pod = yaml.safe_load(pod_file.read_text())
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == pod_name, pod
    return pod


def container_args(pod: dict) -> dict:
    """docker SDK run() arguments for the pod's one container, as a kubelet would start it."""
    spec = pod["spec"]
    assert spec.get("restartPolicy") == "Never", spec
    containers = spec["containers"]
    assert len(containers) == 1, containers
    c = containers[0]
    sc = spec.get("securityContext") or {}
    env = {e["name"]: str(e.get("value", "")) for e in c.get("env") or []}
    kwargs = {
        "image": c["image"],
        "name": pod["metadata"]["name"],
        "hostname": pod["metadata"]["name"],
        "labels": {k: str(v) for k, v in pod["metadata"].get("labels", {}).items()},
        "environment": env,
        "detach": True,
        "network": "bridge",
    }
    # Kubernetes: command replaces the image's ENTRYPOINT, args its CMD.
    if c.get("command"):
        kwargs["entrypoint"] = c["command"]
    if c.get("args"):
        kwargs["command"] = c["args"]
    if c.get("workingDir"):
        kwargs["working_dir"] = c["workingDir"]
    if "runAsUser" in sc:
        kwargs["user"] = f"{sc['runAsUser']}:{sc['runAsGroup']}" if "runAsGroup" in sc else str(sc["runAsUser"])
    if "fsGroup" in sc:
        kwargs["group_add"] = [str(sc["fsGroup"])]
    return kwargs


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from the response receiver within {timeout}s")
    return proc.stdout.readline()


def run_cell(kc, code: str, timeout: float = 120) -> tuple[str, str]:
    """Execute `code`; return (reply status, text output)."""
    mid = kc.execute(code)
    text = ""
    deadline = time.monotonic() + timeout
    idle = False
    while not idle:
        msg = kc.get_iopub_msg(timeout=max(1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != mid:
            continue
        t, c = msg["msg_type"], msg["content"]
        if t == "stream":
            text += c["text"]
        elif t in ("execute_result", "display_data"):
            text += c["data"].get("text/plain", "")
        elif t == "error":
            text += "\n".join(c["traceback"])
        elif t == "status" and c["execution_state"] == "idle":
            idle = True
    while True:  # skip replies to earlier requests (wait_for_ready's kernel_info requests)
        reply = kc.get_shell_msg(timeout=max(1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == mid:
            return reply["content"]["status"], text


def test_images_present():
    assert "python-kernel" in IMAGES, IMAGES


@pytest.mark.parametrize("image", IMAGES)
def test_k8s_pod_template_under_docker(paths, docker_client, image, tmp_path):
    image_ref = ec.build_image(image)
    img = ec.KNOWN_IMAGES[image]
    kid = str(uuid.uuid4())
    host_ip = ec.bridge_gateway(docker_client)
    recv_log = open(tmp_path / "receiver.log", "w")  # noqa: SIM115 - closed below
    recv = subprocess.Popen(
        [paths.py_eg, str(HERE / "helpers" / "eg_receive_payload.py"), str(free_port()), kid, "180", host_ip],
        stdout=subprocess.PIPE,
        stderr=recv_log,
        text=True,
        start_new_session=True,
    )
    container = None
    try:
        hello = json.loads(_readline(recv, 60))
        pod = render_pod(paths, tmp_path, image, image_ref, kid, hello["response_address"], hello["public_key"])
        kw = container_args(pod)
        # What EG's template and launcher put there, checked before running it.
        assert kw["image"] == image_ref and kw["user"] == "1000:100" and kw["group_add"] == ["100"], kw
        env = kw["environment"]
        assert env["KERNEL_ID"] == kid and env["RESPONSE_ADDRESS"] == hello["response_address"], env
        assert env["PUBLIC_KEY"] == hello["public_key"] and env["PORT_RANGE"] == "0..0", env
        assert env["KERNEL_LANGUAGE"] == img.language and env["KERNEL_NAME"] == f"{ec.spec_name(image)}_kubernetes"
        assert env["KERNEL_SPARK_CONTEXT_INIT_MODE"] == (img.spark_mode or "none"), env
        assert kw["labels"]["kernel_id"] == kid and kw["labels"]["component"] == "kernel", kw["labels"]

        container = docker_client.containers.run(**kw)
        line = _readline(recv, 180)
        got = json.loads(line)
        container.reload()
        assert "connection_info" in got, f"{got}\n--- container log ---\n{container.logs().decode()[-4000:]}"
        info = got["connection_info"]
        assert info["kernel_id"] == kid, info
        pod_ip = container.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        assert info.get("ip") in (None, pod_ip, "0.0.0.0"), f"payload ip {info.get('ip')} is not the pod's {pod_ip}"

        from jupyter_client import BlockingKernelClient  # venv-eg's, as EG uses it

        kc = BlockingKernelClient()
        kc.load_connection_info(
            {
                **{f: info[f] for f in PORT_FIELDS},
                "ip": pod_ip,
                "key": info["key"],
                "transport": "tcp",
                "signature_scheme": info["signature_scheme"],
            }
        )
        kc.start_channels(hb=False)
        try:
            kc.wait_for_ready(timeout=180)
            status, text = run_cell(kc, img.cell)
            assert status == "ok" and img.expect in text, f"{img.cell!r} -> {status} {text!r}"
            if img.language == "python":
                status, text = run_cell(kc, "import os; print(os.getuid(), os.getgid(), sorted(os.getgroups()))")
                assert status == "ok" and text.split()[:2] == ["1000", "100"], text
            kc.shutdown()
        finally:
            kc.stop_channels()
        # The kernel's exit ends the launcher, PID 1, so the "pod" ends as on Kubernetes.
        result = container.wait(timeout=120)
        assert result["StatusCode"] == 0, f"container exit {result}\n{container.logs().decode()[-4000:]}"
    finally:
        if container is not None:
            container.remove(force=True)
        kill_tree(recv)
        recv_log.close()
    assert not ec.kernel_containers(docker_client, kid), "pod container left"
