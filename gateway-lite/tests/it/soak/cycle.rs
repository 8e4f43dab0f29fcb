//! One soak cycle: start, execute, interrupt a running sleep, restart, execute, delete, with
//! the faults its [`Plan`] drew and a check after each of what the fault may leave.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_tungstenite::MaybeTlsStream;

use super::plan::{KillAfter, Plan, Victim};
use super::procs::{describe, ids, is_launcher};
use super::{CHATTY_CELL, EXECUTE_WAIT, Soak, Trace};
use crate::support::{HangUp, KernelClient, WAIT, env_var, processes_of, processes_with_env};

/// One cycle of kernel `n`.
pub(super) struct Cycle<'a> {
    pub(super) s: &'a Soak,
    pub(super) n: usize,
    pub(super) plan: Plan,
    pub(super) t: Trace,
}

impl Cycle<'_> {
    pub(super) async fn run(&self) -> Result<(), String> {
        let (s, plan, t) = (self.s, &self.plan, &self.t);
        if let Some(how) = plan.post {
            self.hang_up_start(how).await?;
        }

        let began = Instant::now();
        let (status, _, body) =
            s.gw.http(
                "POST",
                "/api/kernels",
                Some(&s.start_body(&format!("c{}", self.n))),
            )
            .await;
        ensure!(status == 201, "POST /api/kernels: {status} {body}");
        s.latency("start", began);
        let model: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let id = model["id"]
            .as_str()
            .ok_or_else(|| format!("201 without an id: {body}"))?
            .to_owned();
        s.learned(&id);
        t.note(format_args!("POST /api/kernels → 201 {id}"));

        let started = Instant::now();
        let mut c = s.gw.try_connect(&id, plan.v1).await?;
        let out = tokio::time::timeout(EXECUTE_WAIT, c.try_execute("1+1"))
            .await
            .map_err(|_| format!("no answer to the first 1+1 in {EXECUTE_WAIT:?}"))?
            .ok_or("the socket closed during the first 1+1")?;
        ensure!(out.text == "2", "first 1+1 gave {out:?}");
        s.latency("first_execute", started);
        t.note("first 1+1 → 2");
        // The leak checks count processes by their tag: it must reach them.
        let tagged = processes_with_env(&format!("KERNEL_SOAK_TAG=c{}", self.n));
        let all = processes_of(&id);
        ensure!(
            !all.is_empty() && all.iter().all(|p| tagged.contains(p)),
            "the request env does not reach the processes of kernel {id} (KERNEL_SOAK_TAG on {tagged:?}, processes {}): leaks could not be counted",
            describe(&all)
        );

        c = self.maybe_kill(&id, KillAfter::Start, c).await?;
        if let Some((after, reset)) = plan.ws_drop {
            c = self.drop_mid_execute(&id, c, after, reset).await?;
        }
        c = self.interrupt(&id, c).await?;
        c = self.maybe_kill(&id, KillAfter::Interrupt, c).await?;
        c = self.restart(&id, c).await?;
        let c = self.maybe_kill(&id, KillAfter::Restart, c).await?;

        if let Some(how) = plan.delete
            && self.hang_up_delete(&id, how).await?
        {
            return Ok(());
        }
        // The connection stays open across the DELETE, as a notebook's does.
        s.delete(&id, t).await?;
        drop(c);
        Ok(())
    }

    /// Hangs up on a start. Unless the 201 came (before or after the hang-up: then the kernel
    /// is the client's and is checked and deleted), no kernel may come of it: no process with
    /// its tag, none of its kernel ids listed.
    async fn hang_up_start(&self, how: HangUp) -> Result<(), String> {
        let (s, t) = (self.s, &self.t);
        let tag = format!("c{}-hangup", self.n);
        let r =
            s.gw.hang_up("POST", "/api/kernels", Some(&s.start_body(&tag)), how)
                .await;
        s.count("abandoned_posts");
        if !how.whole {
            s.count("abandoned_posts_partial");
        }
        if r.before.is_none() && how.whole {
            s.count(if how.connection_close {
                "posts_hung_up_unanswered_conn_close"
            } else {
                "posts_hung_up_unanswered_keepalive"
            });
        }
        let answer = match (r.before, r.after) {
            (Some(a), _) => {
                s.count("posts_answered_before_hangup");
                t.note(format_args!(
                    "hang-up POST {how:?}: answered {} before it",
                    a.0
                ));
                Some(a)
            }
            (None, Some(a)) => {
                let what = format!(
                    "hang-up POST {how:?}: answered {} {} ms after it",
                    a.0,
                    r.waited.as_millis()
                );
                if a.0 == 201 {
                    // Rare with a gateway that abandons the launch of a client that left.
                    s.count(if how.connection_close {
                        "posts_answered_after_hangup_conn_close"
                    } else {
                        "posts_answered_after_hangup_keepalive"
                    });
                    println!("soak: cycle {}: {what}", self.n);
                }
                t.note(what);
                Some(a)
            }
            (None, None) => {
                t.note(format_args!("hang-up POST {how:?}: no answer"));
                None
            }
        };
        if let Some((201, _, body)) = &answer {
            let model: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let id = model["id"]
                .as_str()
                .ok_or_else(|| format!("201 without an id: {body}"))?;
            s.learned(id);
            s.usable(id, false, "(started by a hung-up POST that was answered)")
                .await?;
            return s.delete(id, t).await;
        }

        let needle = format!("KERNEL_SOAK_TAG={tag}");
        let deadline = Instant::now() + WAIT;
        let mut seen = BTreeSet::new();
        loop {
            let pids = processes_with_env(&needle);
            seen.extend(pids.iter().filter_map(|p| env_var(*p, "KERNEL_ID")));
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let (_, list) = s.gw.json("GET", "/api/kernels", None).await;
                let listed: Vec<String> = ids(&list)
                    .into_iter()
                    .filter(|i| seen.contains(i))
                    .collect();
                return Err(format!(
                    "a POST /api/kernels hung up on ({how:?}, answer {:?}) left processes running for {WAIT:?}: {} (listed: {listed:?})",
                    answer.map(|a| a.0),
                    describe(&pids)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, list) = s.gw.json("GET", "/api/kernels", None).await;
        let listed: Vec<String> = ids(&list)
            .into_iter()
            .filter(|i| seen.contains(i))
            .collect();
        ensure!(
            listed.is_empty(),
            "a POST /api/kernels hung up on ({how:?}) left kernel(s) {listed:?} listed without processes"
        );
        if !seen.is_empty() {
            t.note(format_args!("its launch {seen:?} was cleaned up"));
        }
        Ok(())
    }

    async fn maybe_kill(
        &self,
        id: &str,
        at: KillAfter,
        c: KernelClient,
    ) -> Result<KernelClient, String> {
        let Some((when, victim)) = self.plan.kill.filter(|k| k.0 == at) else {
            return Ok(c);
        };
        let s = self.s;
        let before = processes_of(id);
        let pid = before
            .iter()
            .copied()
            .find(|p| is_launcher(*p) == (victim == Victim::Launcher))
            .ok_or_else(|| {
                format!(
                    "no {victim:?} process of kernel {id} to kill: {}",
                    describe(&before)
                )
            })?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)
            .map_err(|e| format!("kill -9 {pid}: {e}"))?;
        s.count("sigkills");
        s.count(match victim {
            Victim::Launcher => "sigkills_launcher",
            Victim::Kernel => "sigkills_kernel",
        });
        self.t
            .note(format_args!("SIGKILL {victim:?} {pid} ({when:?})"));
        drop(c);
        // The gateway restarts it: new launcher, new kernel, same id.
        let deadline = Instant::now() + WAIT;
        loop {
            let now = processes_of(id);
            if !now.is_empty() && now.iter().all(|p| !before.contains(p)) {
                break;
            }
            if Instant::now() > deadline {
                let (status, model) = s.gw.json("GET", &format!("/api/kernels/{id}"), None).await;
                return Err(format!(
                    "no automatic restart of kernel {id} within {WAIT:?} after SIGKILL of its {victim:?} {pid}: processes before {before:?}, now {}; model {status} {model}",
                    describe(&now)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s.count("automatic_restarts_observed");
        let c = s
            .usable(id, self.plan.v1, "after its automatic restart")
            .await?;
        self.t.note("restarted automatically, usable");
        Ok(c)
    }

    async fn drop_mid_execute(
        &self,
        id: &str,
        mut c: KernelClient,
        after: Duration,
        reset: bool,
    ) -> Result<KernelClient, String> {
        c.try_send(
            "shell",
            "execute_request",
            json!({"code": CHATTY_CELL, "silent": false, "stop_on_error": false}),
        )
        .await
        .map_err(|e| format!("sending the chatty cell: {e}"))?;
        tokio::time::sleep(after).await;
        if reset && let MaybeTlsStream::Plain(tcp) = c.ws.get_ref() {
            let _ = tcp.set_zero_linger();
        }
        drop(c);
        self.s.count("websocket_drops");
        self.t.note(format_args!(
            "WebSocket dropped {}ms into a cell{}",
            after.as_millis(),
            if reset { " (RST)" } else { "" }
        ));
        self.s
            .usable(
                id,
                self.plan.v1,
                "after a client vanished in the middle of an execute",
            )
            .await
    }

    /// Interrupts a running `time.sleep(600)`: KeyboardInterrupt. With a hung-up interrupt
    /// first, two SIGINTs can reach the cell; the second can land after the cell, in
    /// ipykernel's handler, which then ends without an `execute_reply` ("KeyboardInterrupt
    /// caught in kernel"). So there the check is that the kernel runs `1+1` again well before
    /// the sleep would have ended.
    async fn interrupt(&self, id: &str, mut c: KernelClient) -> Result<KernelClient, String> {
        let (s, plan, t) = (self.s, &self.plan, &self.t);
        let url = format!("/api/kernels/{id}/interrupt");
        let sleep = tokio::time::timeout(EXECUTE_WAIT, c.try_start_sleep(600))
            .await
            .map_err(|_| format!("the sleep cell did not start in {EXECUTE_WAIT:?}"))??;
        tokio::time::sleep(plan.interrupt_after).await;
        if let Some(how) = plan.interrupt {
            let r = s.gw.hang_up("POST", &url, None, how).await;
            s.count("abandoned_interrupts");
            if !how.whole {
                s.count("abandoned_interrupts_partial");
            }
            t.note(format_args!(
                "hang-up interrupt {how:?}: answered before it: {:?}",
                r.before.map(|a| a.0)
            ));
        }
        let began = Instant::now();
        let (status, _, body) = s.gw.http("POST", &url, None).await;
        ensure!(status == 204, "POST {url}: {status} {body}");
        s.latency("interrupt", began);
        let twice = plan.interrupt.is_some();
        let wait = if twice { EXECUTE_WAIT } else { WAIT };
        match tokio::time::timeout(wait, c.try_collect(&sleep)).await {
            Ok(Some(out))
                if out.ename == "KeyboardInterrupt"
                    || (twice
                        && out.status == "error"
                        && out.text.contains("KeyboardInterrupt")) =>
            {
                t.note("interrupt → 204, KeyboardInterrupt");
            }
            Ok(Some(out)) => return Err(format!("the interrupted sleep gave {out:?}")),
            Ok(None) => return Err("the socket closed during the interrupted sleep".into()),
            Err(_) if twice => {
                s.count("interrupt_replies_lost");
                t.note("interrupt → 204, no reply to the sleep cell");
            }
            Err(_) => return Err(format!("the interrupted sleep did not end in {wait:?}")),
        }
        if !twice {
            return Ok(c);
        }
        drop(c);
        s.usable(id, plan.v1, "after a hung-up interrupt").await
    }

    async fn restart(&self, id: &str, mut c: KernelClient) -> Result<KernelClient, String> {
        let (s, plan, t) = (self.s, &self.plan, &self.t);
        let url = format!("/api/kernels/{id}/restart");
        if let Some(how) = plan.restart {
            let before = processes_of(id);
            let r = s.gw.hang_up("POST", &url, None, how).await;
            s.count("abandoned_restarts");
            if !how.whole {
                s.count("abandoned_restarts_partial");
            }
            t.note(format_args!(
                "hang-up restart {how:?}: answered before it: {:?}",
                r.before.map(|a| a.0)
            ));
            drop(c);
            c = s.usable(id, plan.v1, "after a hung-up restart").await?;
            if processes_of(id).iter().all(|p| !before.contains(p)) {
                s.count("abandoned_restarts_applied");
                t.note("usable, restarted");
            } else {
                t.note("usable, not restarted");
            }
        }
        let began = Instant::now();
        let (status, model) = s.gw.json("POST", &url, None).await;
        ensure!(
            status == 200 && model["id"] == id,
            "POST {url}: {status} {model}"
        );
        s.latency("restart", began);
        // The connection stays across the restart.
        let out = tokio::time::timeout(EXECUTE_WAIT, c.try_execute("1+1"))
            .await
            .map_err(|_| format!("no answer to 1+1 after the restart in {EXECUTE_WAIT:?}"))?
            .ok_or("the socket closed during 1+1 after the restart")?;
        ensure!(out.text == "2", "1+1 after the restart gave {out:?}");
        t.note("restart → 200, 1+1 → 2");
        Ok(c)
    }

    /// Hangs up on a DELETE (returns whether it stopped the kernel). The whole request must
    /// still stop the kernel: 404 and no process left. One cut short must leave it untouched:
    /// listed, the same processes, usable.
    async fn hang_up_delete(&self, id: &str, how: HangUp) -> Result<bool, String> {
        let (s, t) = (self.s, &self.t);
        let url = format!("/api/kernels/{id}");
        let mut before = processes_of(id);
        before.sort_unstable();
        let r = s.gw.hang_up("DELETE", &url, None, how).await;
        s.count("abandoned_deletes");
        if !how.whole {
            s.count("abandoned_deletes_partial");
        }
        t.note(format_args!(
            "hang-up DELETE {how:?}: answered before it: {:?}",
            r.before.as_ref().map(|a| a.0)
        ));
        if !how.whole {
            let (status, model) = s.gw.json("GET", &url, None).await;
            let mut now = processes_of(id);
            now.sort_unstable();
            ensure!(
                status == 200 && now == before,
                "a DELETE cut short ({how:?}) changed kernel {id}: {status} {model}, processes {before:?} → {}",
                describe(&now)
            );
            s.usable(id, false, "after a DELETE cut short").await?;
            t.note("untouched, usable");
            return Ok(false);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, model) = s.gw.json("GET", &url, None).await;
            let now = processes_of(id);
            if status == 404 && now.is_empty() {
                s.count("abandoned_deletes_applied");
                t.note("the hung-up DELETE stopped the kernel");
                return Ok(true);
            }
            ensure!(
                Instant::now() < deadline,
                "a DELETE hung up on ({how:?}) did not stop kernel {id} within {WAIT:?}: {status} {model}, processes {}",
                describe(&now)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
