//! A whole run: read the notebook and parameters, start the kernel, wait until it answers,
//! inject the parameters, run the code cells in order, save, and delete the kernel whatever
//! happened (errors, timeouts, signals), then map the outcome to an exit code.
//!
//! Signals are caught for the whole run, so Ctrl-C while the kernel is still starting waits
//! for the start request to return and then deletes the kernel, instead of leaving it behind.
//! papermill's metadata is written as papermill writes it (`metadata.papermill` on the
//! notebook and on every cell: start and end times, duration, status, exception), and the
//! notebook is saved after each cell (at most every [`SAVE_EVERY`]) and at the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::args::{self, RunArgs};
use super::cell::{CellContext, CellEnd, Stop, StopRx, run_cell};
use super::channel::KernelChannel;
use super::http::Gateway;
use super::notebook::{Notebook, object_field, source_text};
use super::outputs::Displays;
use super::params::{self, Language, Param};
use super::progress::Progress;

/// Least time between two saves while cells run.
pub const SAVE_EVERY: Duration = Duration::from_secs(10);
/// How often `kernel_info_request` is repeated while the kernel is not answering.
const KERNEL_INFO_RETRY: Duration = Duration::from_secs(2);

/// How a run ended, before the exit code.
enum Outcome {
    Done,
    CellError {
        cell: usize,
        index: usize,
        count: Value,
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
    TimedOut {
        cell: usize,
    },
    /// A cell called `sys.exit(0)`: the run stops there, successfully.
    Exited {
        cell: usize,
    },
    Stopped(Stop),
    /// A failure with its exit code.
    Failed(i32, String),
}

/// Runs the command; returns the exit code.
pub async fn run(args: RunArgs) -> i32 {
    let usage = |m: String| {
        eprintln!("gateway-lite run: {m}");
        args::EXIT_USAGE
    };
    let mut nb = match Notebook::load(&args.notebook) {
        Ok(nb) => nb,
        Err(e) => return usage(e.to_string()),
    };
    super::markers::remove(&mut nb);
    let params = match params::from_pairs(&args.parameters, &args.parameters_raw) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    if !params.is_empty()
        && let Some(l) = nb.language().filter(|l| Language::from_name(l).is_none())
    {
        return usage(format!(
            "the notebook's language is {l:?}: parameters can be written in Python and R only"
        ));
    }
    let gateway = match Gateway::new(&args.url, args.token(), args.ca_file.as_deref()) {
        Ok(g) => g,
        Err(e) => return usage(e.to_string()),
    };
    let output = args.output_path();
    let (stop_tx, mut stop) = watch::channel((None, 0u32));
    let listener = tokio::spawn(listen_for_signals(stop_tx));

    let kernel_name = args
        .kernel
        .clone()
        .or_else(|| nb.kernel_name().map(str::to_owned));
    let mut env = Map::new();
    for (k, v) in &args.env {
        env.insert(k.clone(), Value::String(v.clone()));
    }
    // Who the kernel is for, as Jupyter Server's gateway client tells it: Enterprise Gateway
    // checks it against its authorized/unauthorized users (root is refused by default).
    if !env.contains_key("KERNEL_USERNAME") {
        let user = ["KERNEL_USERNAME", "USER", "LOGNAME"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
        if let Some(u) = user {
            env.insert("KERNEL_USERNAME".into(), Value::String(u));
        }
    }
    if let Some(cwd) = &args.cwd {
        env.insert("KERNEL_WORKING_DIR".into(), Value::String(cwd.clone()));
    }
    let code_cells = count_code_cells(&nb) + usize::from(!params.is_empty());
    let mut progress = Progress::new(code_cells, !args.no_progress);
    let started = time_now();
    let mut saved = false;

    let kernel = gateway
        .start_kernel(kernel_name.as_deref(), &env, args.startup_timeout)
        .await;
    let outcome = match &kernel {
        Err(e) => Outcome::Failed(
            args::EXIT_UNAVAILABLE,
            format!(
                "starting a kernel{}: {e}",
                kernel_name
                    .map(|n| format!(" of {n:?}"))
                    .unwrap_or_default()
            ),
        ),
        Ok(_) if stop.borrow().0.is_some() => Outcome::Stopped(stop.borrow().0.expect("checked")),
        Ok(id) => {
            progress.note(&format!("kernel {id} started"));
            let mut run = Run {
                args: &args,
                gateway: &gateway,
                kernel_id: id,
                nb: &mut nb,
                params: &params,
                output: &output,
                progress: &mut progress,
                stop: &mut stop,
                started,
                saved: &mut saved,
            };
            run.execute().await
        }
    };
    // The kernel goes, whatever happened.
    let mut code = match &outcome {
        Outcome::Done | Outcome::Exited { .. } => args::EXIT_OK,
        Outcome::CellError { .. } => args::EXIT_CELL_ERROR,
        Outcome::TimedOut { .. } => args::EXIT_CELL_TIMEOUT,
        Outcome::Stopped(Stop::Int) => args::EXIT_SIGINT,
        Outcome::Stopped(Stop::Term) => args::EXIT_SIGTERM,
        Outcome::Failed(c, _) => *c,
    };
    if let Ok(id) = &kernel
        && let Err(e) = gateway.delete(id).await
    {
        eprintln!("gateway-lite run: could not delete kernel {id}: {e}");
        if code == args::EXIT_OK {
            code = args::EXIT_UNAVAILABLE;
        }
    }
    listener.abort();
    let summary = report(&outcome, saved.then_some(output.as_path()));
    progress.finish(&summary);
    if !matches!(outcome, Outcome::Done | Outcome::Exited { .. }) {
        eprintln!("gateway-lite run: {summary}");
    }
    if let Outcome::CellError { traceback, .. } = &outcome {
        let color = std::io::IsTerminal::is_terminal(&std::io::stderr());
        for line in traceback {
            if color {
                eprintln!("{line}");
            } else {
                eprintln!("{}", strip_ansi(line));
            }
        }
    }
    code
}

/// The one-line summary of `outcome`; `output` if the notebook was written.
fn report(outcome: &Outcome, output: Option<&Path>) -> String {
    let saved = match output {
        Some(p) => format!("saved {}", p.display()),
        None => "nothing ran, no notebook written".to_owned(),
    };
    match outcome {
        Outcome::Done => format!("every cell ran; {saved}"),
        Outcome::CellError {
            cell,
            count,
            ename,
            evalue,
            ..
        } => format!(
            "cell {cell} (In [{}]) raised {ename}: {evalue}; {saved}",
            count.as_u64().map_or("?".into(), |n| n.to_string())
        ),
        Outcome::Exited { cell } => {
            format!("cell {cell} called sys.exit(0): the run stopped there; {saved}")
        }
        Outcome::TimedOut { cell } => {
            format!("cell {cell} ran longer than --cell-timeout and was interrupted; {saved}")
        }
        Outcome::Stopped(s) => {
            let signal = match s {
                Stop::Int => "SIGINT",
                Stop::Term => "SIGTERM",
            };
            if output.is_some() {
                format!("{signal} received: the running cell was interrupted; {saved}")
            } else {
                format!("{signal} received while the kernel started; {saved}")
            }
        }
        Outcome::Failed(_, why) => why.clone(),
    }
}

/// The parts of a run once its kernel exists.
struct Run<'a> {
    args: &'a RunArgs,
    gateway: &'a Gateway,
    kernel_id: &'a str,
    nb: &'a mut Notebook,
    params: &'a [Param],
    output: &'a PathBuf,
    progress: &'a mut Progress,
    stop: &'a mut StopRx,
    started: (String, Instant),
    /// Set once the output notebook was written.
    saved: &'a mut bool,
}

impl Run<'_> {
    async fn execute(&mut self) -> Outcome {
        let mut channel = match KernelChannel::open(self.gateway, self.kernel_id).await {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Failed(
                    args::EXIT_UNAVAILABLE,
                    format!("kernel {}: {e}", self.kernel_id),
                );
            }
        };
        let info = match self.wait_ready(&mut channel).await {
            Ok(info) => info,
            Err(o) => return o,
        };
        if let Some(li) = info.get("language_info") {
            self.nb
                .metadata_mut()
                .insert("language_info".into(), li.clone());
        }
        if !self.params.is_empty() {
            let lang_name = self
                .nb
                .language()
                .map(str::to_owned)
                .or_else(|| {
                    info.pointer("/language_info/name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let Some(lang) = Language::from_name(&lang_name) else {
                return Outcome::Failed(
                    args::EXIT_USAGE,
                    format!(
                        "the kernel's language is {lang_name:?}: parameters can be written in Python and R only"
                    ),
                );
            };
            params::inject(self.nb, lang, self.params);
        }
        self.start_metadata();
        if let Err(o) = self.save() {
            return o;
        }
        let outcome = self.run_cells(&mut channel).await;
        channel.close().await;
        self.end_metadata(matches!(outcome, Outcome::CellError { .. }));
        if let Outcome::CellError { index, count, .. } = &outcome {
            super::markers::insert(self.nb, *index, count);
        }
        match self.save() {
            Ok(()) => outcome,
            Err(o) => o,
        }
    }

    /// Sends `kernel_info_request` until the kernel answers (Enterprise Gateway's remote
    /// kernels can take a moment after the start request returns).
    async fn wait_ready(&mut self, channel: &mut KernelChannel) -> Result<Value, Outcome> {
        let deadline = Instant::now() + self.args.startup_timeout;
        loop {
            let id = channel
                .send("shell", "kernel_info_request", json!({}))
                .await
                .map_err(|e| Outcome::Failed(args::EXIT_UNAVAILABLE, e.to_string()))?;
            let retry = (Instant::now() + KERNEL_INFO_RETRY).min(deadline);
            loop {
                tokio::select! {
                    m = channel.recv() => {
                        let m = m.map_err(|e| Outcome::Failed(args::EXIT_UNAVAILABLE, e.to_string()))?;
                        if m.msg_type == "kernel_info_reply" && m.parent_id.as_deref() == Some(id.as_str()) {
                            return Ok(m.content);
                        }
                    }
                    _ = tokio::time::sleep_until(retry) => break,
                    _ = self.stop.changed() => {
                        if let Some(s) = self.stop.borrow().0 {
                            return Err(Outcome::Stopped(s));
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Outcome::Failed(
                    args::EXIT_UNAVAILABLE,
                    format!(
                        "kernel {} did not answer kernel_info within --startup-timeout ({:?})",
                        self.kernel_id, self.args.startup_timeout
                    ),
                ));
            }
        }
    }

    async fn run_cells(&mut self, channel: &mut KernelChannel) -> Outcome {
        let mut code_index = 0;
        let mut displays = Displays::default();
        let mut last_save = std::time::Instant::now();
        for i in 0..self.nb.len() {
            let cell = self.nb.cell_mut(i);
            let is_code = cell.get("cell_type").and_then(Value::as_str) == Some("code");
            let source = source_text(cell);
            set_papermill(cell, "start_time", json!(time_now().0));
            set_papermill(cell, "status", json!("running"));
            set_papermill(cell, "exception", json!(false));
            let started = Instant::now();
            let end = if is_code && !source.trim().is_empty() {
                code_index += 1;
                self.progress.cell_started(code_index, &source);
                let mut ctx = CellContext {
                    gateway: self.gateway,
                    kernel_id: self.kernel_id,
                    channel,
                    stop: self.stop,
                    progress: self.progress,
                    timeout: self.args.cell_timeout,
                    log_output: self.args.log_output,
                    displays: &mut displays,
                    index: i,
                    updates: Vec::new(),
                };
                let end = run_cell(&mut ctx, self.nb.cell_mut(i), &source).await;
                // Displays of earlier cells this one updated (nbclient does the same).
                for u in std::mem::take(&mut ctx.updates) {
                    for (c, o) in displays.places(&u.id, i) {
                        let outputs = self.nb.cell_mut(c).get_mut("outputs");
                        if let Some(out) = outputs.and_then(|v| v.get_mut(o)) {
                            u.apply_to(out);
                        }
                    }
                }
                self.progress.cell_finished();
                Some(end)
            } else {
                if is_code {
                    code_index += 1;
                }
                None
            };
            let cell = self.nb.cell_mut(i);
            set_papermill(cell, "end_time", json!(time_now().0));
            set_papermill(cell, "duration", json!(started.elapsed().as_secs_f64()));
            let failed = !matches!(end, None | Some(CellEnd::Ran { error: None }));
            set_papermill(
                cell,
                "status",
                json!(if failed { "failed" } else { "completed" }),
            );
            set_papermill(cell, "exception", json!(failed));
            let n = i + 1;
            let count = cell.get("execution_count").cloned().unwrap_or(Value::Null);
            match end {
                None | Some(CellEnd::Ran { error: None }) => {}
                Some(CellEnd::Ran {
                    error: Some((ename, evalue, _)),
                }) if ename == "SystemExit" && (evalue.is_empty() || evalue == "0") => {
                    // papermill's convention: sys.exit() / sys.exit(0) ends the run early, and
                    // successfully.
                    return Outcome::Exited { cell: n };
                }
                Some(CellEnd::Ran {
                    error: Some((ename, evalue, traceback)),
                }) => {
                    return Outcome::CellError {
                        cell: n,
                        index: i,
                        count,
                        ename,
                        evalue,
                        traceback,
                    };
                }
                Some(CellEnd::TimedOut) => return Outcome::TimedOut { cell: n },
                Some(CellEnd::Stopped(s)) => return Outcome::Stopped(s),
                Some(CellEnd::KernelDied(why)) => {
                    return Outcome::Failed(args::EXIT_UNAVAILABLE, format!("cell {n}: {why}"));
                }
                Some(CellEnd::Channel(e)) => {
                    return Outcome::Failed(args::EXIT_UNAVAILABLE, format!("cell {n}: {e}"));
                }
            }
            if last_save.elapsed() >= SAVE_EVERY {
                if let Err(o) = self.save() {
                    return o;
                }
                last_save = std::time::Instant::now();
            }
        }
        Outcome::Done
    }

    /// papermill's starting metadata: the notebook's, and every cell pending with its
    /// outputs and execution count cleared.
    fn start_metadata(&mut self) {
        let input = self.args.notebook.display().to_string();
        let output = self.output.display().to_string();
        let params = params::to_json(self.params);
        let start = self.started.0.clone();
        let meta = self.nb.metadata_mut();
        let pm = object_field(meta, "papermill");
        pm.insert("default_parameters".into(), json!({}));
        pm.insert("parameters".into(), params);
        pm.insert("environment_variables".into(), json!({}));
        pm.insert(
            "version".into(),
            json!(format!("gateway-lite {}", env!("CARGO_PKG_VERSION"))),
        );
        pm.insert("input_path".into(), json!(input));
        pm.insert("output_path".into(), json!(output));
        pm.insert("start_time".into(), json!(start));
        pm.insert("end_time".into(), Value::Null);
        pm.insert("duration".into(), Value::Null);
        pm.insert("exception".into(), Value::Null);
        for i in 0..self.nb.len() {
            let cell = self.nb.cell_mut(i);
            if cell.get("cell_type").and_then(Value::as_str) == Some("code") {
                cell.insert("execution_count".into(), Value::Null);
                cell.insert("outputs".into(), json!([]));
            }
            let meta = object_field(cell, "metadata");
            // papermill gives every cell a `tags` list when it reads a notebook; so does this.
            meta.entry("tags").or_insert_with(|| json!([]));
            meta.insert(
                "papermill".into(),
                json!({"exception": null, "start_time": null, "end_time": null, "duration": null, "status": "pending"}),
            );
        }
    }

    fn end_metadata(&mut self, exception: bool) {
        let duration = self.started.1.elapsed().as_secs_f64();
        let pm = object_field(self.nb.metadata_mut(), "papermill");
        pm.insert("end_time".into(), json!(time_now().0));
        pm.insert("duration".into(), json!(duration));
        if exception {
            pm.insert("exception".into(), json!(true));
        }
    }

    fn save(&mut self) -> Result<(), Outcome> {
        self.nb
            .save(self.output)
            .map_err(|e| Outcome::Failed(args::EXIT_CANT_CREATE, e.to_string()))?;
        *self.saved = true;
        Ok(())
    }
}

fn set_papermill(cell: &mut Map<String, Value>, key: &str, v: Value) {
    let meta = object_field(cell, "metadata");
    object_field(meta, "papermill").insert(key.into(), v);
}

fn count_code_cells(nb: &Notebook) -> usize {
    nb.cells()
        .iter()
        .filter(|c| c.get("cell_type").and_then(Value::as_str) == Some("code"))
        .count()
}

/// Now as papermill writes times (`datetime.utcnow().isoformat()`: no zone suffix), and as
/// an instant.
fn time_now() -> (String, Instant) {
    let iso = super::channel::now_iso();
    (iso.trim_end_matches('Z').to_owned(), Instant::now())
}

/// Sends every SIGINT and SIGTERM to the run (with a count: a second one cuts waits short).
async fn listen_for_signals(tx: watch::Sender<(Option<Stop>, u32)>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("gateway-lite run: cannot listen for signals; Ctrl-C will not save the notebook");
        // Keep the sender: a closed channel would wake the run's waits over and over.
        std::future::pending::<()>().await;
        drop(tx);
        return;
    };
    loop {
        let s = tokio::select! {
            _ = int.recv() => Stop::Int,
            _ = term.recv() => Stop::Term,
        };
        tx.send_modify(|(last, n)| {
            *last = Some(s);
            *n += 1;
        });
    }
}

/// `s` without ANSI escape sequences (tracebacks are coloured for terminals).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_stripped_from_tracebacks() {
        assert_eq!(
            strip_ansi("\x1b[0;31mValueError\x1b[0m: bad"),
            "ValueError: bad"
        );
        assert_eq!(time_now().0.len(), 26);
    }
}
