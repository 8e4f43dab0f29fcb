//! The kernel images (images/*/build.sh) run the way Enterprise Gateway's Docker launchers run
//! them: `docker run` with environment only (KERNEL_ID, RESPONSE_ADDRESS, PUBLIC_KEY,
//! KERNEL_UID, ...) and `--user KERNEL_UID`, no command. A real response listener receives and
//! decrypts the payload, jupyter_client (from `$KL_PY_KERNEL`) connects to the ports it names,
//! runs one cell and shuts the kernel down; the container must then exit 0 and nothing of the
//! test may be left. Images come from KL_KERNEL_IMAGE, KL_R_KERNEL_IMAGE,
//! KL_SPARK_KERNEL_IMAGE and KL_SCALA_KERNEL_IMAGE (scripts/test.sh builds and exports them); a
//! missing one fails the test with the command that builds it.

use e2e::kernel_image::{KernelRun, docker};

/// The image named by `var`; a missing variable is a failure, not a skip.
fn image(var: &str, script: &str) -> String {
    match std::env::var(var) {
        Ok(i) if !i.trim().is_empty() => i.trim().to_string(),
        _ => panic!(
            "{var} is not set: build the image with `{var}=$({script} | tail -n 1)` (scripts/test.sh does) and export it"
        ),
    }
}

/// EG's way ([`KernelRun::start_like_eg`]: environment only, `--user KERNEL_UID`); the cells;
/// shutdown; exit 0; no container left.
fn cells_in(image: &str, cells: &[&str], env: &[(&str, &str)]) -> String {
    let run = KernelRun::create();
    run.start_like_eg(image, env);
    let report = run.payload();
    assert_eq!(report.kernel_id, run.name);
    let output = run.execute_and_shut_down(&report, cells);
    assert_eq!(run.exit_code(), 0, "{}", run.logs());
    let name = run.name.clone();
    drop(run);
    let left = docker(&["ps", "-aq", "--filter", &format!("name={name}")]);
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "container {name} left behind"
    );
    output
}

#[test]
fn python_kernel_image_runs_a_cell() {
    let image = image("KL_KERNEL_IMAGE", "images/python-kernel/build.sh");
    let out = cells_in(
        &image,
        &["import os; print('py', os.getuid(), os.getgid())"],
        &[],
    );
    assert_eq!(out, "py 1000 100");
}

#[test]
fn r_kernel_image_runs_a_cell() {
    let image = image("KL_R_KERNEL_IMAGE", "images/r-kernel/build.sh");
    assert_eq!(cells_in(&image, &["cat(1+1)"], &[]), "2");
}

/// The launcher is PID 1, the driver JVM its child, and the kernel's `spark` (lazy, the
/// image's default) is attached to that JVM with the default master; a gateway's interrupt
/// cancels the running Spark job without killing the driver.
#[test]
fn spark_python_kernel_image_counts_with_spark() {
    let image = image(
        "KL_SPARK_KERNEL_IMAGE",
        "images/spark-python-kernel/build.sh",
    );
    let out = cells_in(
        &image,
        &[
            "print(spark.range(10).count(), spark.sparkContext.master)",
            "INTERRUPT:sc.parallelize(range(2), 2).map(lambda x: __import__('time').sleep(300)).count()",
            // A value, not a print: ipykernel publishes an execute_result from the cell's own
            // thread before its idle status, while printed text goes through its IOPub
            // thread, and once in CI this cell's printed count came after the idle status
            // that ends the client's wait (right after the interrupt, on a loaded machine).
            "spark.range(5).count()",
            "import os; print(open('/proc/1/comm').read().strip(), open('/proc/%d/comm' % os.getppid()).read().strip())",
        ],
        // The gateway host's Spark and Java, as EG's launch_docker.py passes them on.
        &[
            ("SPARK_HOME", "/opt/spark"),
            ("JAVA_HOME", "/usr/lib/jvm/java-8"),
        ],
    );
    // The interrupt cancels the Spark job (Py4JJavaError: the job was cancelled), the driver
    // survives it, and the next job runs.
    assert_eq!(out, "10 local[*]\nPy4JJavaError\n5\nkernel-launcher java");
}

/// KERNEL_SPARK_CONTEXT_INIT_MODE=none defines no `spark`, yet a session the user builds
/// attaches to the driver JVM, whose master came from SPARK_MASTER.
#[test]
fn spark_python_kernel_image_honours_mode_none_and_spark_master() {
    let image = image(
        "KL_SPARK_KERNEL_IMAGE",
        "images/spark-python-kernel/build.sh",
    );
    let out = cells_in(
        &image,
        &[
            "from pyspark.sql import SparkSession; print('spark' in globals(), SparkSession.builder.getOrCreate().sparkContext.master)",
        ],
        &[
            ("KERNEL_SPARK_CONTEXT_INIT_MODE", "none"),
            ("SPARK_MASTER", "local[2]"),
        ],
    );
    assert_eq!(out, "False local[2]");
}

#[test]
fn scala_kernel_image_adds_in_scala_and_counts_with_spark() {
    let image = image("KL_SCALA_KERNEL_IMAGE", "images/scala-kernel/build.sh");
    let out = cells_in(
        &image,
        &[
            "1 + 1",
            // 50 minutes: only the interrupt can end it within the client's 600 s wait.
            "INTERRUPT:Thread.sleep(3000000)",
            "spark.range(10).count()",
            "spark.range(10).count()",
        ],
        &[],
    );
    // After an interrupt Toree's REPL prints its `lastException = null` binding into the
    // next cell's output, and now and then that binding is all the cell answers (its value is
    // dropped). The count is therefore asked twice; the last line is the second answer.
    // The interrupted cell reports java.lang.InterruptedException, or nothing at all when the
    // interrupt reached Toree while it was still compiling the cell (seen once in CI on a
    // loaded machine); either way the cell ended, which its 50-minute sleep could not have.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        (lines.first(), lines.last()),
        (Some(&"2"), Some(&"10")),
        "Toree answered {out:?}"
    );
    assert!(
        matches!(lines.get(1), Some(&"java.lang.InterruptedException" | &"")),
        "the interrupted cell: Toree answered {out:?}"
    );
}

/// A uid the image does not know (no passwd entry, HOME not its own) still gets a kernel,
/// with a private writable HOME.
#[test]
fn python_kernel_image_runs_as_an_unknown_uid() {
    let image = image("KL_KERNEL_IMAGE", "images/python-kernel/build.sh");
    let run = KernelRun::create();
    run.start(&image, "4242:100", &[]);
    let report = run.payload();
    let out = run.execute_and_shut_down(
        &report,
        &["import os; h = os.environ['HOME']; print(os.getuid(), h != '/home/jovyan', os.access(h, os.W_OK))"],
    );
    assert_eq!(out, "4242 True True", "{}", run.logs());
    assert_eq!(run.exit_code(), 0, "{}", run.logs());
    assert!(run.logs().contains("private HOME"), "{}", run.logs());
}

/// IRkernel as a uid without a passwd entry: R's own start-up needs a writable HOME too.
#[test]
fn r_kernel_image_runs_as_an_unknown_uid() {
    let image = image("KL_R_KERNEL_IMAGE", "images/r-kernel/build.sh");
    let run = KernelRun::create();
    run.start(&image, "4242:100", &[]);
    let report = run.payload();
    let out = run.execute_and_shut_down(
        &report,
        &["cat(system('id -u', intern = TRUE), file.access(Sys.getenv('HOME'), 2) == 0)"],
    );
    assert_eq!(out, "4242 TRUE", "{}", run.logs());
    assert_eq!(run.exit_code(), 0, "{}", run.logs());
}

/// Started as root, the launcher switches to KERNEL_UID / KERNEL_GID before the kernel runs.
#[test]
fn python_kernel_image_started_as_root_switches_to_kernel_uid() {
    let image = image("KL_KERNEL_IMAGE", "images/python-kernel/build.sh");
    let run = KernelRun::create();
    run.start(
        &image,
        "0:0",
        &[("KERNEL_UID", "4242"), ("KERNEL_GID", "4343")],
    );
    let report = run.payload();
    let out = run.execute_and_shut_down(
        &report,
        &["import os; print(os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups()))"],
    );
    assert_eq!(out, "4242 4242 4343 [100, 4343]", "{}", run.logs());
    assert_eq!(run.exit_code(), 0, "{}", run.logs());
}

/// Deployments written for EG's images name /usr/local/bin/bootstrap-kernel.sh, as the
/// entrypoint or as the command: both start the kernel.
#[test]
fn bootstrap_kernel_sh_as_entrypoint_or_command_starts_the_kernel() {
    let image = image("KL_KERNEL_IMAGE", "images/python-kernel/build.sh");
    let script = "/usr/local/bin/bootstrap-kernel.sh";
    for (docker_args, command) in [
        (vec!["--user", "1000", "--entrypoint", script], vec![]),
        (vec!["--user", "1000"], vec![script]),
    ] {
        let run = KernelRun::create();
        run.start_with(&image, &docker_args, &[], &command);
        let report = run.payload();
        let out = run.execute_and_shut_down(&report, &["print(6 * 7)"]);
        assert_eq!(out, "42", "{docker_args:?} {command:?}: {}", run.logs());
        assert_eq!(run.exit_code(), 0, "{}", run.logs());
    }
}

/// KERNEL_UID=0 is refused with exit code 77 and a message saying why; no payload is sent.
#[test]
fn kernel_uid_0_is_refused() {
    let image = image("KL_KERNEL_IMAGE", "images/python-kernel/build.sh");
    let run = KernelRun::create();
    run.start(&image, "0:0", &[("KERNEL_UID", "0"), ("KERNEL_GID", "0")]);
    assert_eq!(run.exit_code(), 77, "{}", run.logs());
    assert!(run.logs().contains("never run as root"), "{}", run.logs());
}
