"""`gateway-lite run NOTEBOOK` against real Enterprise Gateway 3.3.0 and against gateway-lite,
each compared with papermill 2.6.0's own run of the same notebook on a local ipykernel
(venv-pm, tests/requirements/papermill.txt): same cells, sources (the injected parameters cell
included), execution counts, outputs and papermill statuses; only timing values, the injected
cell's random id and papermill's paths/version may differ. Also the error path (compared with
papermill's failed run: error markers included), timeout and Ctrl-C against EG, each leaving no
kernel behind, and R parameters through IRkernel.

The notebook is tests/support/notebooks/nbrun.ipynb (gateway-lite's Rust tests run it too).
Output comparison rules, applied to both sides:
  * consecutive stream outputs of one name are joined: JupyterLab joins them before it saves
    and `gateway-lite run` does the same; nbclient (papermill) keeps one output per message,
    and how the kernel batches its writes into messages is timing;
  * multi-line strings are compared joined (nbformat stores them as lists of lines).

Run:  scripts/setup-env.sh && source ~/.cache/kernel-launcher/env.sh &&
      cargo build -p launcher -p gateway-lite &&
      KERNEL_LAUNCHER=$PWD/target/debug/kernel-launcher $KL_PY_EG -m pytest -v tests/eg/test_eg_nbrun.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from support.gateway import REPO, Peers, require_exe, run_gateway
import requests

from support.kernels import isolated_env, load_kl_env

NOTEBOOK = REPO / "tests/support/notebooks/nbrun.ipynb"
PARAMS = ["-p", "alpha", "21", "-p", "name", 'wo"rld é', "-p", "ratio", "2.5e-5", "-p", "flag", "True",
          "-p", "nothing", "None", "-r", "raw", "12"]
RUN_TIMEOUT = 300


def _gateway_lite() -> str:
    return require_exe(
        os.environ.get("GATEWAY_LITE") or str(REPO / "target/debug/gateway-lite"),
        "gateway-lite",
        "run `cargo build -p gateway-lite` or set GATEWAY_LITE",
    )


def _papermill_python() -> str:
    env = load_kl_env()
    cache = env.get("KL_CACHE") or str(Path.home() / ".cache" / "kernel-launcher")
    value = env.get("KL_PY_PM") or str(Path(cache) / "venv-pm/bin/python")
    return require_exe(value, "KL_PY_PM (python with papermill 2.6.0)", "run scripts/setup-env.sh")


def run_client(url: str, notebook: Path, out: Path, *args: str, token: str | None = None,
               timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_LITE", "JUPYTER_GATEWAY"))}
    if token:
        env["GATEWAY_LITE_AUTH_TOKEN"] = token
    # EG refuses kernels for root (its default unauthorized_users); the client sends this name.
    env["KERNEL_USERNAME"] = "kl-e2e"
    cmd = [_gateway_lite(), "run", str(notebook), "--url", url, "-o", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def kernel_id(proc) -> str:
    for line in proc.stdout.splitlines():
        if line.startswith("kernel ") and line.endswith(" started"):
            return line.split()[1]
    pytest.fail(f"no kernel id printed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)


def wait_kernel_gone(rest, kid: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.get(f"{rest.base_url}/api/kernels", headers=rest.headers, timeout=30)
        assert r.status_code == 200, f"GET /api/kernels: HTTP {r.status_code}: {r.text[:300]}"
        ids = [k["id"] for k in r.json()]
        if kid not in ids:
            return
        time.sleep(0.25)
    pytest.fail(f"kernel {kid} still listed {timeout}s after the run ended", pytrace=False)


def _joined(v):
    return "".join(v) if isinstance(v, list) else v


def _output(o: dict) -> dict:
    o = json.loads(json.dumps(o))
    if o.get("output_type") == "stream":
        o["text"] = _joined(o["text"])
    for k, v in (o.get("data") or {}).items():
        if isinstance(v, list):
            o["data"][k] = _joined(v)
    return o


def _outputs(outs: list[dict]) -> list[dict]:
    merged: list[dict] = []
    for o in map(_output, outs):
        last = merged[-1] if merged else None
        if last and o["output_type"] == "stream" and last["output_type"] == "stream" and last["name"] == o["name"]:
            last["text"] += o["text"]
        else:
            merged.append(o)
    return merged


def comparable(nb: dict) -> dict:
    """What must match between two runs of the notebook."""
    cells = []
    for c in nb["cells"]:
        meta = c["metadata"]
        tags = meta.get("tags", [])
        entry = {
            "id": "injected" if "injected-parameters" in tags else c.get("id"),
            "cell_type": c["cell_type"],
            "source": _joined(c["source"]),
            "tags": tags,
            "papermill": {k: meta.get("papermill", {}).get(k) for k in ("status", "exception")},
            "other_metadata": {k: v for k, v in meta.items() if k not in ("papermill", "execution", "tags")},
        }
        if c["cell_type"] == "code":
            entry["execution_count"] = c["execution_count"]
            entry["outputs"] = _outputs(c["outputs"])
            entry["timing_keys"] = sorted(meta.get("execution", {}))
        cells.append(entry)
    pm = nb["metadata"]["papermill"]
    return {
        "cells": cells,
        "parameters": pm["parameters"],
        "exception": pm["exception"],
        "language": nb["metadata"]["language_info"]["name"],
        "metadata_keys": sorted(nb["metadata"]),
        "kernelspec": nb["metadata"]["kernelspec"],
        "custom": nb["metadata"].get("custom_extension"),
    }


def run_papermill(paths, notebook: Path, out: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """papermill (venv-pm) on a local ipykernel registered as `python3`, in its own Jupyter dirs."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec = tmp / "share/jupyter/kernels/python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [paths.py_kernel, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    env = isolated_env(tmp, f"papermill-{uuid.uuid4().hex}", [tmp / "share/jupyter"])
    return subprocess.run([_papermill_python(), "-m", "papermill", str(notebook), str(out), *args],
                          capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT, cwd=tmp)


@pytest.fixture(scope="module")
def papermill_nb(paths, tmp_path_factory) -> dict:
    """papermill's run of the notebook on a local ipykernel named as the notebook says."""
    tmp = tmp_path_factory.mktemp("papermill")
    out = tmp / "papermill.ipynb"
    proc = run_papermill(paths, NOTEBOOK, out, tmp, *PARAMS)
    assert proc.returncode == 0, f"papermill failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def check_same_as_papermill(out: Path, papermill_nb: dict) -> None:
    text = out.read_text()
    nb = json.loads(text)
    # Valid nbformat 4, as JupyterLab will read it.
    nbformat.validate(nbformat.reads(text, as_version=4))
    ours, theirs = comparable(nb), comparable(papermill_nb)
    for i, (a, b) in enumerate(zip(ours["cells"], theirs["cells"])):
        assert a == b, f"cell {i + 1} differs from papermill's:\n ours:      {a}\n papermill: {b}"
    assert ours == theirs
    # Images came through as the kernel sent them (the PNG cell).
    image = next(c for c in nb["cells"] if c.get("id") == "image")
    assert image["outputs"][0]["data"]["image/png"].startswith("iVBORw0KGgo")


@pytest.mark.parametrize("spec_name", ["eg_py_own", "kl_py_plain"])
def test_eg_run_matches_papermill(request, paths, eg_server, papermill_nb, tmp_path, spec_name):
    if eg_server.specs[spec_name].ours:
        request.getfixturevalue("launcher")
    out = tmp_path / "out.ipynb"
    proc = run_client(eg_server.base_url, NOTEBOOK, out, "--kernel", spec_name, *PARAMS)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}\n{eg_server.log_tail()}"
    wait_kernel_gone(eg_server.rest(), kernel_id(proc))
    # The notebook names kernelspec python3; --kernel chose another: the document keeps its own.
    check_same_as_papermill(out, papermill_nb)


def test_gateway_lite_run_matches_papermill(paths, launcher, papermill_nb, tmp_path):
    peers = Peers(gateway=_gateway_lite(), launcher=launcher, py_kernel=paths.py_kernel,
                  this_venv_bin=Path(sys.executable).parent)
    specs = {"python3": {"argv": peers.ipykernel_argv(), "language": "python"}}
    with run_gateway(peers, tmp_path / "gl", specs, "python3", token=uuid.uuid4().hex) as gw:
        out = tmp_path / "out.ipynb"
        proc = run_client(gw.url, NOTEBOOK, out, *PARAMS, token=gw.token)
        assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}\n{gw.log_tail()}"
        kid = kernel_id(proc)
        assert kid not in [k["id"] for k in gw.kernels()]
    check_same_as_papermill(out, papermill_nb)


def _small_nb(tmp: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    p = tmp / "small.ipynb"
    nbformat.write(nb, str(p))
    return p


def test_eg_error_saves_deletes_the_kernel_and_matches_papermill(paths, eg_server, tmp_path):
    """A failing cell: exit 1 with the cell and traceback on stderr, the kernel deleted, and the
    saved notebook as papermill saves a failed run (error markers, statuses, later cells not run)."""
    nb = _small_nb(tmp_path, "print('before')", "def f():\n    raise KeyError('missing')\nf()", "print('never')")
    out = tmp_path / "out.ipynb"
    proc = run_client(eg_server.base_url, nb, out, "--kernel", "eg_py_own")
    assert proc.returncode == 1, f"{proc.stdout}\n{proc.stderr}"
    assert "cell 2 (In [2]) raised KeyError: 'missing'" in proc.stderr
    assert "----> 3 f()" in proc.stderr.split("raised", 1)[1]
    wait_kernel_gone(eg_server.rest(), kernel_id(proc))
    theirs_path = tmp_path / "papermill.ipynb"
    pm = run_papermill(paths, nb, theirs_path, tmp_path / "pm")
    assert pm.returncode == 1, pm.stderr[-2000:]
    ours, theirs = json.loads(out.read_text()), json.loads(theirs_path.read_text())
    nbformat.validate(nbformat.reads(out.read_text(), as_version=4))
    a, b = comparable(ours), comparable(theirs)
    for i, (x, y) in enumerate(zip(a["cells"], b["cells"])):
        x.pop("id"), y.pop("id")  # the markers' ids are random on both sides
        assert x == y, f"cell {i + 1} differs from papermill's:\n ours:      {x}\n papermill: {y}"
    assert len(a["cells"]) == len(b["cells"]) == 5
    assert a["exception"] is b["exception"] is True


def test_eg_timeout_interrupts_and_deletes_the_kernel(eg_server, tmp_path):
    nb = _small_nb(tmp_path, "print('slow', flush=True)\nimport time\ntime.sleep(600)", "print('never')")
    out = tmp_path / "out.ipynb"
    proc = run_client(eg_server.base_url, nb, out, "--kernel", "eg_py_own", "--cell-timeout", "3")
    assert proc.returncode == 3, f"{proc.stdout}\n{proc.stderr}"
    wait_kernel_gone(eg_server.rest(), kernel_id(proc))
    outs = json.loads(out.read_text())["cells"][0]["outputs"]
    assert [o.get("ename") for o in outs] == [None, "KeyboardInterrupt"], outs


def test_eg_sigint_interrupts_saves_and_deletes_the_kernel(eg_server, tmp_path):
    marker = tmp_path / "running"
    nb = _small_nb(tmp_path, f"open({str(marker)!r}, 'w').close()\nimport time\ntime.sleep(600)", "print('never')")
    out = tmp_path / "out.ipynb"
    cmd = [_gateway_lite(), "run", str(nb), "--url", eg_server.base_url, "-o", str(out), "--kernel", "eg_py_own",
           "--env", "KERNEL_USERNAME=kl-e2e"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the cell never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, f"{stdout}\n{stderr}"
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    wait_kernel_gone(eg_server.rest(), kernel_id(done))
    outs = json.loads(out.read_text())["cells"][0]["outputs"]
    assert outs[-1]["ename"] == "KeyboardInterrupt", outs


def test_eg_run_r_notebook_with_parameters(launcher, eg_server, tmp_path):
    """R parameters as papermill writes them (TRUE/FALSE, NULL, quoted strings, leading '_'
    dropped), injected after the `parameters` cell and run by IRkernel through EG."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "kl_ir", "display_name": "R", "language": "R"}
    nb.cells = [
        nbformat.v4.new_code_cell("n <- 1\ns <- 'a'\nb <- FALSE\nz <- 0\nf <- 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("cat(class(n), class(s), b, is.null(z), f, s, '\\n')"),
    ]
    path = tmp_path / "r.ipynb"
    nbformat.write(nb, str(path))
    out = tmp_path / "r.out.ipynb"
    proc = run_client(eg_server.base_url, path, out, "-p", "n", "7", "-p", "s", 'say "hi"', "-p", "b", "True",
                      "-p", "_z", "None", "-p", "f", "2.5")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    wait_kernel_gone(eg_server.rest(), kernel_id(proc))
    saved = json.loads(out.read_text())
    injected = saved["cells"][1]
    assert injected["metadata"]["tags"] == ["injected-parameters"]
    assert _joined(injected["source"]) == '# Parameters\nn = 7\ns = "say \\"hi\\""\nb = TRUE\nz = NULL\nf = 2.5\n'
    text = _joined(saved["cells"][2]["outputs"][0]["text"])
    assert text == 'numeric character TRUE TRUE 2.5 say "hi" \n', text
    assert saved["metadata"]["language_info"]["name"] == "R"
