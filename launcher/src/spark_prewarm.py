"""Spark names for a Python kernel started by kernel-launcher.

kernel-launcher writes this file next to the connection file and passes it to
ipykernel with --IPKernelApp.exec_files, so it runs inside the kernel before
the kernel serves its first request. It must return at once: the
SparkSession is built on a side thread while the kernel already answers
kernel_info and ordinary cells.

Names defined from the first cell on: spark, sc, sql, sqlContext, sqlCtx.
Until Spark is ready they are stand-ins; using one waits until Spark is ready
(Ctrl-C/interrupt stops the wait) and then acts as the real object. When the
session exists the stand-ins are swapped for the real objects, unless the user
has rebound a name. A failed start makes every use raise a RuntimeError that
carries the cause. Modes (env KERNEL_LAUNCHER_SPARK_INIT):

  lazy   kernel_info and cells not touching Spark run at once.
  eager  the same start-up, but the first cell waits until Spark is ready,
         so Spark is there before any user code runs; kernel_info is not
         delayed.

Interrupts cancel running Spark jobs: a SIGINT handler, installed for each
cell (ipykernel resets the handler per request), cancels the jobs from a
helper thread with its own Py4J connection. When the cell is blocked inside a
Py4J call, the handler lets that call fail with Spark's "cancelled" error
instead of raising KeyboardInterrupt in the middle of a Py4J read, which would
leave that connection out of step. SIGUSR2 cancels jobs too, for gateways
configured with EG's alternate interrupt signal.

Only public pyspark API is used (SparkSession.builder, SparkContext
cancelAllJobs/statusTracker, SQLContext), so the same code runs on pyspark
3.x and 4.x.
"""


def _kernel_launcher_spark():
    import atexit
    import os
    import signal
    import sys
    import threading
    import warnings

    def log(message):
        # ipykernel 7 captures fd 2, so whatever is written here shows in the
        # cell running at that moment: only log what that cell's user wants
        # to see (start-up happens before any cell; interrupts are theirs).
        stream = sys.__stderr__
        if stream is not None:
            print(f"[kernel-launcher spark] {message}", file=stream, flush=True)

    def describe(error):
        """The error's type and its first lines (a Py4JJavaError's Java cause is on line 2)."""
        lines = [line.strip(" \t:") for line in str(error).splitlines() if line.strip(" \t:")]
        return f"{type(error).__name__}: {' '.join(lines[:2])}" if lines else repr(error)

    mode = os.environ.get("KERNEL_LAUNCHER_SPARK_INIT", "lazy")
    try:
        from pyspark.sql import SparkSession
    except Exception as e:  # noqa: BLE001 - any import failure means "no Spark here"
        log(f"pyspark is not importable ({e!r}); spark, sc and sql are not defined")
        return

    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        log("not running inside IPython; Spark names are not defined")
        return
    namespace = shell.user_ns
    names = ("spark", "sc", "sql", "sqlContext", "sqlCtx")
    ready = threading.Event()
    state = {}

    class Pending:
        """Stands in for a Spark object until the session exists."""

        __slots__ = ("_kl_name",)

        def __init__(self, name):
            object.__setattr__(self, "_kl_name", name)

        def _kl_resolve(self):
            while not ready.wait(0.1):
                pass
            if "error" in state:
                cause = state["error"]
                raise RuntimeError(
                    f"Spark failed to start, so `{self._kl_name}` is not available: {describe(cause)}"
                ) from cause
            return state["real"][self._kl_name]

        def __getattr__(self, attr):
            # IPython probes display hooks; answer without waiting for Spark.
            if attr.startswith(("_ipython_", "_repr_")) or attr == "__wrapped__":
                raise AttributeError(attr)
            return getattr(self._kl_resolve(), attr)

        def __setattr__(self, attr, value):
            setattr(self._kl_resolve(), attr, value)

        def __call__(self, *args, **kwargs):
            return self._kl_resolve()(*args, **kwargs)

        def __dir__(self):
            return dir(self._kl_resolve())

        def __repr__(self):
            if "real" in state:
                return repr(state["real"][self._kl_name])
            if "error" in state:
                return f"<{self._kl_name}: Spark failed to start: {describe(state['error'])}>"
            return f"<{self._kl_name}: Spark is starting in the background; using it waits until it is ready>"

    def build():
        try:
            builder = SparkSession.builder
            app_name = os.environ.get("KERNEL_LAUNCHER_SPARK_APP_NAME")
            # Under spark-submit the driver JVM already has its application name.
            if app_name and "PYSPARK_GATEWAY_PORT" not in os.environ:
                builder = builder.appName(app_name)
            session = builder.getOrCreate()
            context = session.sparkContext
            try:
                from pyspark.sql import SQLContext

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sql_context = SQLContext(context, session)
            except Exception:  # noqa: BLE001 - SQLContext is optional; the session does the same job
                sql_context = session
            state["real"] = {
                "spark": session,
                "sc": context,
                "sql": session.sql,
                "sqlContext": sql_context,
                "sqlCtx": sql_context,
            }
            atexit.register(session.stop)
        except BaseException as e:  # noqa: BLE001 - every failure must reach the stand-ins
            state["error"] = e
        finally:
            # Swap the names first, so a cell released by `ready` sees the real objects.
            if "real" in state:
                for name in names:
                    if isinstance(namespace.get(name), Pending):
                        namespace[name] = state["real"][name]
            ready.set()

    def active_jobs_cancelled():
        """Cancels running jobs from this (non-main) thread; True if there were any."""
        real = state.get("real")
        if real is None:
            return False
        try:
            context = real["sc"]
            active = list(context.statusTracker().getActiveJobsIds())
            if active:
                context.cancelAllJobs()
                log(f"interrupt: cancelled Spark jobs {active}")
            return bool(active)
        except Exception as e:  # noqa: BLE001 - a failed cancel must not kill the kernel
            log(f"interrupt: could not cancel Spark jobs: {e!r}")
            return False

    def cancel_in_thread():
        result = []
        helper = threading.Thread(target=lambda: result.append(active_jobs_cancelled()), daemon=True)
        helper.start()
        helper.join(10)
        return bool(result and result[0])

    def in_py4j_call(frame):
        while frame is not None:
            if str(frame.f_globals.get("__name__", "")).startswith("py4j"):
                return True
            frame = frame.f_back
        return False

    def on_sigint(signum, frame):
        if cancel_in_thread() and in_py4j_call(frame):
            return
        raise KeyboardInterrupt

    first_cell = [True]

    def pre_run_cell(*_args):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, on_sigint)
        if mode == "eager" and first_cell[0]:
            first_cell[0] = False
            if not ready.is_set():
                print("Waiting for Spark to start (eager mode)...", flush=True)
                while not ready.wait(0.1):
                    pass

    for name in names:
        namespace[name] = Pending(name)
    shell.events.register("pre_run_cell", pre_run_cell)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=active_jobs_cancelled, daemon=True).start())
    threading.Thread(target=build, name="kernel-launcher-spark", daemon=True).start()
    log(f"starting Spark in the background ({mode} mode)")


_kernel_launcher_spark()
del _kernel_launcher_spark
