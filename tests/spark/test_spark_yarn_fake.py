"""YARN kernelspecs with a FAKE spark-submit (no YARN cluster can run on this machine).

The generated (`kernel-launcher kernelspec install`) spark_python_yarn_cluster / spark_python_yarn_client kernelspecs are run the
way EG would run them (kernelspec env with jupyter_client's ${VAR} substitution, EG's KERNEL_*
variables, argv placeholders filled in), but with SPARK_HOME pointing at a temp dir whose
bin/spark-submit is fake_spark_submit.sh, written at test time: it records its argv and
environment and exits 0. Nothing reaches YARN; the tests check only the spark-submit command line.

The reference is Enterprise Gateway 3.3.0's own kernelspecs, read at test time from the sdist
($KL_EG_SDIST/etc/kernelspecs/spark_python_yarn_{cluster,client}): their kernel.json, and the
command their bin/run.sh produces when run against the same fake spark-submit.
"""

from __future__ import annotations

import json
import os
import shlex
import string
import subprocess
from pathlib import Path

import pytest

from support.spark import spec_name

KERNEL_ID = "0f6a2e1c-5b7d-4c1e-9a3f-2d4b6c8e0a11"
FILLED = {
    "{kernel_id}": KERNEL_ID,
    "{response_address}": "127.0.0.1:48765",
    "{public_key}": "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDfakeKeyForTheFakeSparkSubmitTestOnly",
    "{port_range}": "0..0",
}
EXTRA = "--conf spark.yarn.queue=kl-test"

FAKE_SPARK_SUBMIT = r"""#!/usr/bin/env bash
# FAKE spark-submit for tests/spark/test_spark_yarn_fake.py: records argv and env, runs nothing.
set -eu
out="${FAKE_SPARK_SUBMIT_RECORD:?}"
printf '%s\0' "$@" >"$out.argv"
env -0 >"$out.env"
exit 0
"""

# spark-submit options that take no value (the rest take exactly one).
NO_VALUE = {"--verbose", "-v", "--supervise", "--help", "-h", "--version", "--usage-error"}


def fake_spark_home(tmp: Path) -> Path:
    home = tmp / "fake-spark-home"
    (home / "bin").mkdir(parents=True)
    fake = home / "bin" / "fake_spark_submit.sh"
    fake.write_text(FAKE_SPARK_SUBMIT)
    fake.chmod(0o755)
    (home / "bin" / "spark-submit").symlink_to("fake_spark_submit.sh")
    return home


def substitute(value: str, env: dict) -> str:
    # What jupyter_client 6 (EG 3.3.0's) does with kernelspec env values.
    return string.Template(value).safe_substitute(env)


def run_spec(spec_dir: Path, kernel_json: dict, home: Path, record: Path, run_sh: Path | None = None, env_extra=None):
    """Runs a kernelspec's argv like EG's DistributedProcessProxy/YarnClusterProcessProxy would
    (env: EG's KERNEL_* vars + the kernelspec env block, SPARK_HOME swapped for the fake).
    Returns (spark-submit argv, spark-submit env)."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "KERNEL_ID": KERNEL_ID,
        "KERNEL_USERNAME": "alice",
        "KERNEL_LANGUAGE": "python",
        "KERNEL_GATEWAY": "1",
        "EG_IMPERSONATION_ENABLED": "False",
        "KERNEL_EXTRA_SPARK_OPTS": EXTRA,
        **(env_extra or {}),
    }
    env = dict(base)
    env.update({k: substitute(v, base) for k, v in kernel_json.get("env", {}).items()})
    env.update({k: v for k, v in base.items() if k.startswith("KERNEL_")})  # EG re-applies user overrides
    env["SPARK_HOME"] = str(home)
    env["FAKE_SPARK_SUBMIT_RECORD"] = str(record)
    argv = [FILLED.get(a, a) for a in kernel_json["argv"]]
    if run_sh is not None:
        argv = ["bash", str(run_sh), *argv[1:]]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=str(spec_dir))
    assert r.returncode == 0, f"{argv} -> rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    recorded = Path(f"{record}.argv").read_bytes().split(b"\0")[:-1]
    env_out = dict(
        item.split(b"=", 1) for item in Path(f"{record}.env").read_bytes().split(b"\0") if b"=" in item
    )
    return [a.decode() for a in recorded], {k.decode(): v.decode() for k, v in env_out.items()}


def parse_submit(argv: list[str]) -> dict:
    """spark-submit argv -> options, confs, primary resource, application arguments."""
    opts: dict[str, list[str]] = {}
    confs: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] in NO_VALUE:
            opts.setdefault(argv[i], []).append("")
            i += 1
            continue
        name, value = argv[i], argv[i + 1]
        if name == "--conf":
            k, _, v = value.partition("=")
            confs[k] = v
        else:
            opts.setdefault(name, []).append(value)
        i += 2
    assert i < len(argv), f"no primary resource in {argv}"
    return {"opts": opts, "confs": confs, "primary": argv[i], "app_args": argv[i + 1 :]}


def one(parsed: dict, opt: str) -> str:
    values = parsed["opts"].get(opt, [])
    assert len(values) == 1, f"{opt} given {len(values)} times: {parsed}"
    return values[0]


def check_shipped_launcher(parsed: dict, spec_dir: Path, launcher: str, tmp: Path) -> None:
    """`--archives ARCHIVE#kernel-launcher` names a tarball of this launcher; unpacked the way
    YARN localizes an archive (FAKE: a directory named after the alias in the container's
    working directory), the driver python path runs the launcher."""
    archive, _, alias = one(parsed, "--archives").partition("#")
    assert alias == "kernel-launcher" and Path(archive).parent == spec_dir / "bin", archive
    container = tmp / "fake-yarn-container"
    (container / alias).mkdir(parents=True)
    subprocess.run(["tar", "-xzf", archive, "-C", str(container / alias)], check=True)
    shipped = container / alias / "kernel-launcher"
    assert shipped.read_bytes() == Path(launcher).read_bytes(), "the archive holds another binary"
    r = subprocess.run(
        [parsed["confs"]["spark.pyspark.driver.python"], "--version"],
        cwd=container,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and "kernel-launcher" in (r.stdout + r.stderr), r


@pytest.mark.parametrize("kind", ["yarn_cluster", "yarn_client"])
def test_yarn_kernelspec_with_fake_spark_submit_matches_eg(kind, spark_kernelspecs, eg_sdist, launcher, venvs, tmp_path):
    """FAKE spark-submit: the generated spark_python_<kind> kernelspec produces the spark-submit
    command of EG 3.3.0's own spark_python_<kind> kernelspec (master, deploy mode, --name <kernel
    id>, YARN confs, launcher options unchanged after the primary resource), with kernel-launcher
    as spark.pyspark.driver.python and an existing primary resource."""
    ours_dir = spark_kernelspecs / "kernels" / spec_name(kind, "43", "lazy")
    eg_dir = eg_sdist / "etc" / "kernelspecs" / f"spark_python_{kind}"
    ours = json.loads((ours_dir / "kernel.json").read_text())
    eg = json.loads((eg_dir / "kernel.json").read_text())
    home = fake_spark_home(tmp_path)

    # kernel.json: same language, process proxy and gateway options as EG's spec.
    assert ours["language"] == eg["language"] == "python"
    assert ours["metadata"]["process_proxy"]["class_name"] == eg["metadata"]["process_proxy"]["class_name"]
    assert ours["argv"][1:] == eg["argv"][1:], "launcher options differ from EG's kernelspec"
    assert Path(ours["argv"][0]).is_file() and os.access(ours["argv"][0], os.X_OK)

    our_argv, our_env = run_spec(ours_dir, ours, home, tmp_path / "ours")
    eg_argv, _ = run_spec(eg_dir, eg, home, tmp_path / "eg", run_sh=eg_dir / "bin" / "run.sh")
    o, e = parse_submit(our_argv), parse_submit(eg_argv)
    print(f"ours: {shlex.join(our_argv)}\nEG:   {shlex.join(eg_argv)}")

    deploy = "cluster" if kind == "yarn_cluster" else "client"
    for p in (o, e):
        assert one(p, "--master") == "yarn"
        assert one(p, "--deploy-mode") == deploy
        assert one(p, "--name") == KERNEL_ID
        assert p["confs"].get("spark.yarn.queue") == "kl-test", "KERNEL_EXTRA_SPARK_OPTS not passed"
    # Every YARN conf EG's spec sets we set the same way, except EG's site-specific
    # spark.yarn.appMasterEnv.* (HDP paths of its sample image).
    eg_confs = {k: v for k, v in e["confs"].items() if not k.startswith("spark.yarn.appMasterEnv.")}
    for k, v in eg_confs.items():
        assert o["confs"].get(k) == v, f"conf {k}: ours {o['confs'].get(k)!r}, EG {v!r}"
    if kind == "yarn_cluster":
        assert o["confs"]["spark.yarn.submit.waitAppCompletion"] == "false"
    # kernel-launcher is the driver's "python"; executors keep their own python. In cluster
    # mode it travels with the job (--archives) and runs from the container's directory.
    driver = o["confs"]["spark.pyspark.driver.python"]
    if kind == "yarn_cluster":
        assert driver == "./kernel-launcher/kernel-launcher"
        check_shipped_launcher(o, ours_dir, launcher, tmp_path)
    else:
        assert driver == launcher
        assert "--archives" not in o["opts"]
    for l in (launcher, driver):
        assert "spark.pyspark.python" not in o["confs"] or o["confs"]["spark.pyspark.python"] != l
        assert our_env.get("PYSPARK_PYTHON") != l and our_env.get("PYSPARK_DRIVER_PYTHON") != l
    # The primary resource exists (cluster mode uploads it) and is a .py file.
    primary = Path(o["primary"])
    assert primary.suffix == ".py" and primary.is_file(), o["primary"]
    # After the primary resource: LAUNCH_OPTS, then the gateway's options exactly as EG's run.sh passes them.
    filled = [FILLED.get(a, a) for a in ours["argv"][1:]]
    assert o["app_args"] == [*shlex.split(ours["env"]["LAUNCH_OPTS"]), *filled]
    assert e["app_args"] == filled
    assert o["app_args"][:2] == ["--interpreter", venvs["43"].python]
    assert our_env["KERNEL_ID"] == KERNEL_ID and our_env["SPARK_HOME"] == str(home)


def test_yarn_cluster_impersonation_with_fake_spark_submit_matches_eg(spark_kernelspecs, eg_sdist, tmp_path):
    """FAKE spark-submit: with EG_IMPERSONATION_ENABLED=True the YARN cluster spec submits with
    --proxy-user <KERNEL_USERNAME>, like EG 3.3.0's spark_python_yarn_cluster run.sh."""
    ours_dir = spark_kernelspecs / "kernels" / spec_name("yarn_cluster", "43", "lazy")
    eg_dir = eg_sdist / "etc" / "kernelspecs" / "spark_python_yarn_cluster"
    ours = json.loads((ours_dir / "kernel.json").read_text())
    eg = json.loads((eg_dir / "kernel.json").read_text())
    home = fake_spark_home(tmp_path)
    imp = {"EG_IMPERSONATION_ENABLED": "True"}
    our_argv, _ = run_spec(ours_dir, ours, home, tmp_path / "ours", env_extra=imp)
    eg_argv, _ = run_spec(eg_dir, eg, home, tmp_path / "eg", run_sh=eg_dir / "bin" / "run.sh", env_extra=imp)
    assert one(parse_submit(our_argv), "--proxy-user") == "alice"
    assert one(parse_submit(eg_argv), "--proxy-user") == "alice"


@pytest.mark.parametrize("kind", ["yarn_cluster", "yarn_client"])
def test_yarn_kernelspec_modes_with_fake_spark_submit(kind, spark_kernelspecs, tmp_path):
    """FAKE spark-submit: `kernelspec install --spark-init-mode` reaches the launcher as EG's
    --RemoteProcessProxy.spark-context-initialization-mode option, for every mode."""
    home = fake_spark_home(tmp_path)
    for mode in ("lazy", "eager", "none"):
        d = spark_kernelspecs / "kernels" / spec_name(kind, "43", mode)
        spec = json.loads((d / "kernel.json").read_text())
        argv, _ = run_spec(d, spec, home, tmp_path / mode)
        args = parse_submit(argv)["app_args"]
        i = args.index("--RemoteProcessProxy.spark-context-initialization-mode")
        assert args[i + 1] == mode, args
