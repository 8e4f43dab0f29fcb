//! Warm pools (`--pool NAME=N`): a POST is answered with a kernel started before it, which
//! carries nothing from its time in the pool; the pool refills, replaces a kernel that died,
//! survives a gateway restart, counts against no limit and is never culled; a request whose
//! env a pooled kernel cannot serve gets a fresh kernel. Real gateway, launcher, ipykernel.

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{
    Gateway, KernelClient, Options, env_var, eventually, processes_of, processes_with_env,
    wait_no_processes,
};

/// Every kernel process of one gateway carries this gateway's mark (`--kernel-env`).
struct Marked {
    mark: String,
}

impl Marked {
    fn new() -> Self {
        Marked {
            mark: uuid::Uuid::new_v4().to_string(),
        }
    }

    fn options(&self, args: &[&str]) -> Options {
        let mut all = vec!["--kernel-env".to_owned(), "KL_POOL_MARK".to_owned()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        Options {
            args: all,
            env: vec![("KL_POOL_MARK".into(), self.mark.clone())],
            ..Options::default()
        }
    }

    /// The ids of every kernel this gateway's processes run (pooled or not).
    fn kernel_ids(&self) -> BTreeSet<String> {
        processes_with_env(&format!("KL_POOL_MARK={}", self.mark))
            .into_iter()
            .filter_map(|pid| env_var(pid, "KERNEL_ID"))
            .collect()
    }
}

async fn metric(gw: &Gateway, line_prefix: &str) -> f64 {
    let (status, _, text) = gw.http("GET", "/metrics", None).await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_prefix:?} in\n{text}"))
}

async fn ready(gw: &Gateway, spec: &str) -> f64 {
    metric(
        gw,
        &format!("gateway_lite_pool_ready{{kernel_name=\"{spec}\"}} "),
    )
    .await
}

async fn requests(gw: &Gateway, outcome: &str) -> f64 {
    metric(
        gw,
        &format!("gateway_lite_pool_requests_total{{outcome=\"{outcome}\"}} "),
    )
    .await
}

/// Waits until the pool of `spec` holds `n` ready kernels.
async fn wait_ready(gw: &Gateway, spec: &str, n: f64) {
    eventually(&format!("{n} ready kernels in pool {spec}"), async || {
        let r = ready(gw, spec).await;
        (r == n, (r, gw.log()))
    })
    .await;
}

async fn listed(gw: &Gateway) -> BTreeSet<String> {
    let (status, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn post(gw: &Gateway, body: Value) -> (u16, Value) {
    gw.json("POST", "/api/kernels", Some(&body.to_string()))
        .await
}

/// Starts a kernel through the API; panics unless 201.
async fn claim(gw: &Gateway, body: Value) -> String {
    let (status, model) = post(gw, body).await;
    assert_eq!(status, 201, "{model}\n{}", gw.log());
    model["id"].as_str().unwrap().to_owned()
}

/// The reply to one shell request and the messages it caused, until `idle`.
async fn shell(c: &mut KernelClient, msg_type: &str, content: Value) -> Value {
    let id = c.send("shell", msg_type, content).await;
    let (mut reply, mut idle) = (None, false);
    while reply.is_none() || !idle {
        let m = c.recv().await.expect("socket open");
        if m.parent_id() != id {
            continue;
        }
        if m.channel == "shell" {
            reply = Some(m.content);
        } else if m.msg_type() == "status" && m.content["execution_state"] == "idle" {
            idle = true;
        }
    }
    reply.unwrap()
}

/// The current session's input history, as `history_request` gives it.
async fn history(c: &mut KernelClient) -> Value {
    let r = shell(
        c,
        "history_request",
        json!({"hist_access_type": "range", "session": 0, "start": 1, "stop": null,
               "output": false, "raw": true}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");
    r["history"].clone()
}

/// A claimed kernel has never run anything: empty history, first execution count 1.
async fn assert_fresh(gw: &Gateway, id: &str) {
    let mut c = gw.connect(id, true).await;
    assert_eq!(
        history(&mut c).await,
        json!([]),
        "the pool left history behind"
    );
    let r = shell(
        &mut c,
        "execute_request",
        json!({"code": "pooled = 6 * 7\npooled", "silent": false, "store_history": true,
               "user_expressions": {}, "allow_stdin": false, "stop_on_error": true}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["execution_count"], 1, "{r}");
    let h = history(&mut c).await;
    assert_eq!(h.as_array().map(Vec::len), Some(1), "{h}");
    assert_eq!(h[0][2], "pooled = 6 * 7\npooled", "{h}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_claims_a_clean_pooled_kernel_and_the_pool_refills() {
    let m = Marked::new();
    let gw = Gateway::start(m.options(&["--pool", "py=2"]));
    wait_ready(&gw, "py", 2.0).await;
    let pooled = m.kernel_ids();
    assert_eq!(pooled.len(), 2, "two pooled kernels run");
    assert!(
        listed(&gw).await.is_empty(),
        "pooled kernels are not listed"
    );
    assert_eq!(
        metric(&gw, "gateway_lite_pool_size{kernel_name=\"py\"} ").await,
        2.0
    );

    // A request with only a user: served from the pool, by a kernel started before it.
    let id = claim(
        &gw,
        json!({"name": "py", "env": {"KERNEL_USERNAME": "ada"}}),
    )
    .await;
    assert!(
        pooled.contains(&id),
        "{id} is not one of the pooled {pooled:?}"
    );
    assert_eq!(listed(&gw).await, BTreeSet::from([id.clone()]));
    assert_eq!(requests(&gw, "hit").await, 1.0);
    assert_fresh(&gw, &id).await;

    // The pool refills in the background: two unclaimed again, three launched in all.
    wait_ready(&gw, "py", 2.0).await;
    assert_eq!(metric(&gw, "gateway_lite_pool_refills_total ").await, 3.0);
    assert!(metric(&gw, "gateway_lite_pool_refill_seconds_sum ").await > 0.0);
    let now = m.kernel_ids();
    assert_eq!(now.len(), 3, "{now:?}");

    // The default kernelspec (py) is pooled too: a POST without a name claims.
    let second = claim(&gw, json!({})).await;
    assert!(now.contains(&second) && second != id);
    assert_eq!(requests(&gw, "hit").await, 2.0);

    // A claimed kernel is an ordinary kernel: DELETE stops it.
    let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{body}");
    assert!(wait_no_processes(&id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incompatible_request_gets_a_fresh_kernel_and_an_empty_pool_a_miss() {
    let m = Marked::new();
    let gw = Gateway::start(m.options(&["--pool", "py=1", "--pool", "silent=1,broken=1"]));
    wait_ready(&gw, "py", 1.0).await;
    let pooled = m.kernel_ids();

    // An env the pooled kernel was not launched with: a fresh kernel that has it.
    let id = claim(
        &gw,
        json!({"name": "py", "env": {"KERNEL_POOL_TEST": "fresh"}}),
    )
    .await;
    assert!(!pooled.contains(&id));
    let pids = processes_of(&id);
    assert!(
        pids.iter()
            .any(|p| env_var(*p, "KERNEL_POOL_TEST").as_deref() == Some("fresh")),
        "the fresh kernel runs with the request's env"
    );
    assert_eq!(requests(&gw, "incompatible").await, 1.0);
    assert_eq!(requests(&gw, "hit").await, 0.0);
    assert_eq!(ready(&gw, "py").await, 1.0, "the pool was not touched");

    // Another kernelspec is not pooled at all: no pool counter moves.
    let other = claim(&gw, json!({"name": "py_eg"})).await;
    assert!(!pooled.contains(&other));
    assert_eq!(requests(&gw, "incompatible").await, 1.0);
    assert_eq!(requests(&gw, "miss").await, 0.0);

    // A pool with no ready kernel (its launcher never reports): a compatible request misses
    // and starts a fresh kernel, here one that times out as it would without a pool.
    let (status, body) = post(
        &gw,
        json!({"name": "silent", "env": {"KERNEL_LAUNCH_TIMEOUT": "1"}}),
    )
    .await;
    assert!(status >= 500, "{status} {body}");
    assert_eq!(requests(&gw, "miss").await, 1.0);
    assert_eq!(ready(&gw, "silent").await, 0.0);
    // A pool whose launches fail counts the failures and keeps trying (backing off).
    eventually("failed refills counted", async || {
        let f = metric(&gw, "gateway_lite_pool_refill_failures_total ").await;
        (f >= 1.0, f)
    })
    .await;
    gw.wait_log("starting a pooled kernel failed").await;

    // Concurrent claims never share a kernel: each gets its own, and each works.
    let (a, b) = tokio::join!(
        claim(&gw, json!({"name": "py"})),
        claim(&gw, json!({"name": "py"}))
    );
    assert_ne!(a, b);
    assert!(requests(&gw, "hit").await >= 1.0);
    assert_eq!(
        requests(&gw, "hit").await + requests(&gw, "miss").await,
        3.0
    );
    for k in [&a, &b] {
        let mut c = gw.connect(k, false).await;
        assert_eq!(c.execute("1 + 1").await.text, "2");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refills_run_at_most_the_refill_concurrency_at_once() {
    let m = Marked::new();
    let gw = Gateway::start(m.options(&["--pool", "py=4", "--pool-refill-concurrency", "1"]));
    // Sampled while the pool fills and refills: never more than one launch at once.
    let mut seen = BTreeSet::new();
    let mut claimed = 0;
    loop {
        let n = metric(&gw, "gateway_lite_pool_refills_in_flight ").await;
        assert!(
            n <= 1.0,
            "{n} refills at once with --pool-refill-concurrency 1"
        );
        seen.insert(n as u64);
        if ready(&gw, "py").await == 4.0 {
            if claimed == 2 {
                break;
            }
            // Two claims at once: two refills queue behind one permit.
            let (a, b) = tokio::join!(
                claim(&gw, json!({"name": "py"})),
                claim(&gw, json!({"name": "py"}))
            );
            assert_ne!(a, b);
            claimed = 2;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.contains(&1), "a refill was seen running: {seen:?}");
    assert_eq!(metric(&gw, "gateway_lite_pool_refills_total ").await, 6.0);
    assert_eq!(m.kernel_ids().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_kernels_count_against_no_limit_until_claimed() {
    let m = Marked::new();
    let gw = Gateway::start(m.options(&[
        "--pool",
        "py=3",
        "--max-kernels",
        "2",
        "--max-kernels-per-user",
        "1",
    ]));
    // Three pooled kernels with a limit of two kernels in all.
    wait_ready(&gw, "py", 3.0).await;
    assert_eq!(m.kernel_ids().len(), 3);
    let as_user = |u: &str| json!({"name": "py", "env": {"KERNEL_USERNAME": u}});
    claim(&gw, as_user("ada")).await;
    // The claim made it ada's: her second is refused, by name.
    let (status, body) = post(&gw, as_user("ada")).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap_or_default().contains("ada"),
        "{body}"
    );
    claim(&gw, as_user("bob")).await;
    // Two claimed: the total limit holds although pooled kernels are left.
    let (status, body) = post(&gw, as_user("cy")).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        ready(&gw, "py").await >= 1.0,
        "pooled kernels are still there"
    );
    assert_eq!(listed(&gw).await.len(), 2);
    assert_eq!(requests(&gw, "hit").await, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_kernels_are_never_culled_but_claimed_ones_are() {
    let m = Marked::new();
    let gw = Gateway::start(m.options(&[
        "--pool",
        "py=1",
        "--cull-idle-timeout",
        "1",
        "--cull-interval",
        "1",
    ]));
    wait_ready(&gw, "py", 1.0).await;
    let pooled = m.kernel_ids();
    // Several cull rounds pass over the idle pooled kernel.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(metric(&gw, "gateway_lite_kernels_culled_total ").await, 0.0);
    assert_eq!(m.kernel_ids(), pooled, "the pooled kernel still runs");
    assert_eq!(metric(&gw, "gateway_lite_pool_refills_total ").await, 1.0);
    // Claimed, it is an ordinary kernel: idle, it is culled.
    let id = claim(&gw, json!({"name": "py"})).await;
    assert!(pooled.contains(&id));
    eventually("the claimed kernel culled", async || {
        let culled = metric(&gw, "gateway_lite_kernels_culled_total ").await;
        (culled == 1.0, culled)
    })
    .await;
    assert!(wait_no_processes(&id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_kernel_that_dies_is_replaced() {
    let m = Marked::new();
    let gw = Gateway::start(m.options(&["--pool", "py=1"]));
    wait_ready(&gw, "py", 1.0).await;
    let victim = m.kernel_ids().into_iter().next().unwrap();
    // SIGKILL the kernel and its launcher.
    for pid in processes_of(&victim) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    eventually("the death noticed", async || {
        let d = metric(&gw, "gateway_lite_pool_deaths_total ").await;
        (d == 1.0, d)
    })
    .await;
    wait_ready(&gw, "py", 1.0).await;
    let replacement = m.kernel_ids();
    assert_eq!(replacement.len(), 1, "{replacement:?}");
    assert!(!replacement.contains(&victim));
    assert!(processes_of(&victim).is_empty());
    // Not restarted under its id (nobody waits for it): replaced by a new kernel.
    assert_eq!(
        metric(&gw, "gateway_lite_kernel_restarts_total{cause=\"death\"} ").await,
        0.0
    );
    let id = claim(&gw, json!({"name": "py"})).await;
    assert!(replacement.contains(&id));
    assert_fresh(&gw, &id).await;
    gw.wait_log("pooled kernel died unclaimed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_survives_a_gateway_restart() {
    let m = Marked::new();
    let state = std::env::temp_dir().join(format!("gl-pool-state-{}", uuid::Uuid::new_v4()));
    let state = state.to_string_lossy().into_owned();
    let first = Gateway::start(m.options(&["--state-dir", &state, "--pool", "py=2"]));
    wait_ready(&first, "py", 2.0).await;
    let claimed = claim(&first, json!({"name": "py"})).await;
    wait_ready(&first, "py", 2.0).await;
    let all = m.kernel_ids();
    assert_eq!(all.len(), 3);
    let dir = first.stop_with(Signal::SIGTERM);
    assert_eq!(
        m.kernel_ids(),
        all,
        "every kernel outlives a SIGTERM'd gateway"
    );

    // The next gateway re-attaches: the claimed kernel is listed, the pooled ones are pooled
    // again, nothing is launched.
    let second = Gateway::start(Options {
        dir: Some(dir),
        ..m.options(&["--state-dir", &state, "--pool", "py=2"])
    });
    assert_eq!(listed(&second).await, BTreeSet::from([claimed.clone()]));
    wait_ready(&second, "py", 2.0).await;
    assert_eq!(
        metric(&second, "gateway_lite_kernels_reattached_total ").await,
        3.0
    );
    assert_eq!(
        metric(&second, "gateway_lite_pool_refills_total ").await,
        0.0
    );
    assert_eq!(m.kernel_ids(), all);
    let id = claim(&second, json!({"name": "py"})).await;
    assert!(all.contains(&id) && id != claimed);
    assert_fresh(&second, &id).await;
    wait_ready(&second, "py", 2.0).await;

    // A smaller pool after the next restart: the extra pooled kernel is shut down.
    let dir = second.stop_with(Signal::SIGTERM);
    let third = Gateway::start(Options {
        dir: Some(dir),
        ..m.options(&["--state-dir", &state, "--pool", "py=1"])
    });
    eventually("the extra pooled kernel retired", async || {
        let n = m.kernel_ids().len();
        (n == 3, n)
    })
    .await;
    wait_ready(&third, "py", 1.0).await;
    assert_eq!(listed(&third).await, BTreeSet::from([claimed, id]));
    // Without --pool, a gateway stopping its kernels leaves none behind, pooled or not.
    let dir = third.stop_with(Signal::SIGTERM);
    let fourth = Gateway::start(Options {
        dir: Some(dir),
        ..m.options(&["--state-dir", &state, "--shutdown-kernels-on-exit"])
    });
    eventually("the unconfigured pool retired", async || {
        let n = m.kernel_ids().len();
        (n == 2, n)
    })
    .await;
    fourth.stop_with(Signal::SIGTERM);
    eventually("every kernel stopped with the gateway", async || {
        let left = m.kernel_ids();
        (left.is_empty(), left)
    })
    .await;
}

/// The labelled containers' kernel ids (Docker provisioner).
fn container_kernels(env: &crate::docker::DockerEnv) -> BTreeSet<String> {
    let (ok, out, err) = crate::docker::docker(&[
        "ps",
        "--filter",
        &format!("label={}", env.label),
        "--format",
        "{{.Label \"kernel_id\"}}",
    ]);
    assert!(ok, "docker ps: {err}");
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_pool_is_claimed_clean_and_replaces_a_killed_container() {
    let env = crate::docker::DockerEnv::new();
    let gw = env.gateway(&["--pool", "docker_py=1"]);
    wait_ready(&gw, "docker_py", 1.0).await;
    let first = container_kernels(&env);
    assert_eq!(first.len(), 1, "one pooled container: {first:?}");

    // A pooled container that is killed is replaced by a new one.
    let victim = first.iter().next().unwrap().clone();
    let c = env
        .container(&victim)
        .expect("the pooled kernel's container");
    let (ok, _, err) = crate::docker::docker(&["kill", c["Id"].as_str().unwrap()]);
    assert!(ok, "docker kill: {err}");
    eventually("the killed container replaced", async || {
        let now = container_kernels(&env);
        (now.len() == 1 && !now.contains(&victim), now)
    })
    .await;
    wait_ready(&gw, "docker_py", 1.0).await;
    assert_eq!(metric(&gw, "gateway_lite_pool_deaths_total ").await, 1.0);
    let pooled = container_kernels(&env);

    // Claimed with a user: the pooled container, clean; the pool starts another.
    let id = claim(
        &gw,
        json!({"name": "docker_py", "env": {"KERNEL_USERNAME": "ada"}}),
    )
    .await;
    assert!(pooled.contains(&id), "{id} not in {pooled:?}");
    assert_fresh(&gw, &id).await;
    eventually("the pool refilled", async || {
        let now = container_kernels(&env);
        (now.len() == 2, now)
    })
    .await;
    wait_ready(&gw, "docker_py", 1.0).await;
    let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{body}");
    eventually("the claimed container removed", async || {
        let now = container_kernels(&env);
        (!now.contains(&id), now)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ssh_pool_is_claimed_clean_on_a_remote_host() {
    let hosts = crate::ssh::Hosts::start();
    let gw = Gateway::start(Options {
        args: hosts.args(&["--pool", "dist=1"]),
        ..Options::default()
    });
    wait_ready(&gw, "dist", 1.0).await;
    let id = claim(
        &gw,
        json!({"name": "dist", "env": {"KERNEL_USERNAME": "ada"}}),
    )
    .await;
    assert_eq!(requests(&gw, "hit").await, 1.0);
    // It runs on one of the SSH hosts (index_of panics for any other namespace).
    let ns = crate::ssh::kernel_ns(&gw, &id).await;
    hosts.index_of(&ns);
    // kernel_ns ran one cell: the claimed kernel's count goes on from there, and nothing of
    // the pool's time is in its history.
    let mut c = gw.connect(&id, true).await;
    let h = history(&mut c).await;
    assert_eq!(h.as_array().map(Vec::len), Some(1), "{h}");
    assert!(
        h[0][2].as_str().unwrap_or_default().contains("readlink"),
        "{h}"
    );
    wait_ready(&gw, "dist", 1.0).await;
    let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{body}");
    crate::ssh::wait_gone(&id).await;
}
