"""PySpark kernels started by real Jupyter Enterprise Gateway 3.3.0 (DistributedProcessProxy on
localhost) from kernelspecs written by `kernel-launcher kernelspec install --mode spark-*`:
EG runs the spec's bin/run.sh -> spark-submit -> kernel-launcher (spark.pyspark.driver.python)
-> ipykernel attached to the spark-submit driver JVM. Everything goes through EG's REST API and
kernel WebSocket. Kernels run one at a time.
"""

from __future__ import annotations

import pytest

from support.spark import SparkKernel, sleep_job_cell, spec_name

IS_SPARK_SESSION = "import pyspark.sql; print('is SparkSession:', isinstance(spark, pyspark.sql.SparkSession))"


@pytest.fixture
def kernel(spark_eg, failure_context):
    """Factory: kernel(spec_name, cluster=None, env=None) -> started SparkKernel; always cleaned up."""
    made: list[SparkKernel] = []

    def start(name: str, cluster=None, env=None) -> SparkKernel:
        k = SparkKernel(spark_eg, name, failure_context, cluster=cluster, env=env)
        made.append(k)
        k.start()
        return k

    yield start
    for k in made:
        k.cleanup()


def run_scenario(k: SparkKernel, expected_master: str) -> None:
    """1+1 while Spark warms, a count, master and app name, interrupt of a running Spark job,
    the kernel survives, DELETE leaves nothing."""
    # The first cell, sent right after kernel_info: answers although Spark is still starting
    # (lazy mode). Only the answer is checked, not how fast it came.
    res = k.execute("1+1", timeout=60)
    assert res.status == "ok" and "2" in res.text, res
    k.track()

    assert k.value("spark.range(10).count()") == "10"
    # After first use the stand-ins are the real objects.
    res = k.execute(IS_SPARK_SESSION)
    assert res.status == "ok" and "is SparkSession: True" in res.text, res
    assert k.value("type(sc).__name__") == "'SparkContext'"
    assert k.value("sc.master") == repr(expected_master)
    app_name = k.value("sc.appName")
    assert k.kid in app_name, f"application name {app_name} does not contain kernel id {k.kid}"
    k.track()

    # Interrupt a long Spark job once it is running: the cell ends with an error, the kernel lives.
    mid = k.ch.submit(sleep_job_cell())
    partial = k.ch.collect(mid, timeout=120, until_text="job running")
    assert "job running" in partial.text, partial
    k.track()
    ri = k.rest.interrupt(k.kid)
    assert ri.status_code == 204, f"interrupt: HTTP {ri.status_code}: {ri.text[:1000]}"
    res = k.ch.collect(mid, timeout=120)
    res.text = partial.text + res.text
    assert res.status == "error", f"the interrupted Spark cell did not end with an error: {res}"
    print(f"interrupted cell: {res.ename}: {str(res.evalue).splitlines()[:1]}")
    assert res.ename == "KeyboardInterrupt" or "cancel" in (str(res.evalue) + res.text).lower(), res
    assert k.value("spark.range(3).count()") == "3"

    # A cell without a Spark job is still interrupted the usual way (KeyboardInterrupt).
    mid = k.ch.submit("print('begin', flush=True)\nimport time\ntime.sleep(600)")
    partial = k.ch.collect(mid, timeout=60, until_text="begin")
    ri = k.rest.interrupt(k.kid)
    assert ri.status_code == 204, f"interrupt: HTTP {ri.status_code}: {ri.text[:1000]}"
    res = k.ch.collect(mid, timeout=60)
    assert res.status == "error" and res.ename == "KeyboardInterrupt", res
    assert k.value("spark.range(4).count()") == "4"

    k.delete_and_check_clean()


@pytest.mark.parametrize("ver", ["43", "35"])
def test_local_lazy_scenario(kernel, ver):
    """spark_python_local (local[*]), lazy pre-warm: 1+1 during warm-up, count, `spark` is a real
    SparkSession afterwards, master, app name = kernel id, interrupt cancels the running job,
    DELETE leaves no JVM/launcher/kernel."""
    k = kernel(spec_name("local", ver, "lazy"))
    run_scenario(k, "local[*]")


def test_standalone_client_lazy_scenario(kernel, standalone_cluster):
    """spark_python_standalone against a real Master + Worker on 127.0.0.1 (client mode), pyspark
    4.3: the same scenario; executors run on the Worker and must be gone after DELETE too."""
    k = kernel(spec_name("standalone", "43", "lazy"), cluster=standalone_cluster)
    run_scenario(k, standalone_cluster.url)


@pytest.mark.parametrize("ver", ["43", "35"])
def test_eager_first_cell_has_spark(kernel, ver):
    """eager: kernel_info is answered (no delay asserted); the first cell waits for Spark, says so
    unless Spark was already up, and sees a real SparkSession."""
    k = kernel(spec_name("local", ver, "eager"))
    res = k.execute(IS_SPARK_SESSION)
    assert res.status == "ok", res
    assert "is SparkSession: True" in res.text, f"first eager cell did not see a SparkSession: {res.text!r}"
    waited = "Waiting for Spark" in res.text
    # Either it waited (and said so) or Spark was ready before the first cell; both are fine.
    print(f"eager first cell waited for Spark: {waited}")
    assert k.value("spark.range(10).count()") == "10"
    k.delete_and_check_clean()


def test_none_mode_defines_no_spark(kernel):
    """none: no pre-warm, `spark` is undefined."""
    k = kernel(spec_name("local", "43", "none"))
    res = k.execute("spark")
    assert res.status == "error" and res.ename == "NameError", res
    res = k.execute("1+1")
    assert res.status == "ok" and "2" in res.text, res
    k.delete_and_check_clean()


@pytest.mark.parametrize("ver", ["43", "35"])
def test_spark_start_failure_is_reported(kernel, ver):
    """A kernel whose SparkContext cannot start: a SparkListener class that does not exist
    (passed per request in KERNEL_EXTRA_SPARK_OPTS, which the kernelspec's SPARK_OPTS expands).
    spark-submit accepts it, SparkContext init inside the driver fails. The kernel must stay usable
    and the Spark names must raise a clear error naming the cause, never hang."""
    bad = "org.example.kl.NoSuchListener"
    k = kernel(
        spec_name("local", ver, "lazy"),
        env={"KERNEL_EXTRA_SPARK_OPTS": f"--conf spark.extraListeners={bad}"},
    )
    res = k.execute("1+1", timeout=60)
    assert res.status == "ok" and "2" in res.text, res
    res = k.execute("spark.range(1).count()")
    assert res.status == "error", f"expected an error from spark: {res}"
    assert res.ename == "RuntimeError", res
    assert "Spark failed to start" in (res.evalue or ""), res
    assert bad in res.text, f"the cause ({bad}) is not in the error output: {res.text[-4000:]}"
    print(f"failure reported as: {res.ename}: {res.evalue}")
    # Every name reports the same failure, again and again, without hanging.
    for name in ("sc.master", "spark.version"):
        res = k.execute(name, timeout=60)
        assert res.status == "error" and "Spark failed to start" in (res.evalue or ""), res
    res = k.execute("1+1", timeout=60)
    assert res.status == "ok" and "2" in res.text, res
    k.delete_and_check_clean()
