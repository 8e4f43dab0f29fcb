//! The shell scripts the SSH provisioner runs on remote hosts, and the quoting that keeps
//! every value one word.
//!
//! Every value that reaches the remote shell (argv, environment, paths) goes through
//! [`quote`]; the script itself is quoted once more for the login shell, whatever it is,
//! which runs `sh -c`. The scripts only use POSIX `sh` and `/proc`, so the hosts need
//! nothing but Linux and the launcher.

use nix::sys::signal::Signal;

/// Marker lines the remote script prints on stdout. Anything else there (a chatty shell rc
/// file) is ignored.
pub(super) const STARTED: &str = "gateway-lite:started ";
pub(super) const EXITED: &str = "gateway-lite:exit ";
pub(super) const GONE: &str = "gateway-lite:gone";

/// Quotes `s` for a POSIX shell: safe words stay as they are, anything else is wrapped in
/// single quotes, with each `'` written as `'\''`.
pub fn quote(s: &str) -> String {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"-_./:,+@%".contains(&b);
    if !s.is_empty() && s.bytes().all(safe) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Shell functions every script uses: `st PID` prints the start time of a live, non-zombie
/// process (fields after the last `) ` of `/proc/PID/stat`, as the command name may hold
/// spaces and parentheses); `nap` sleeps half a second where `sleep` takes fractions.
pub(super) const PRELUDE: &str = r#"st() { s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*") "}; set -- $s; [ "$1" != Z ] && [ "$1" != X ] || return 1; echo "${20}"; }
nap() { sleep 0.5 2>/dev/null || sleep 1; }
"#;

/// The watcher's common part once the launcher's `$pid` and `$t` are known: stream the log
/// to stderr, end this shell (never the launcher) when our stdin reaches EOF, and drop fd 3.
fn follow(from_start: bool) -> String {
    let lines = if from_start { "+1" } else { "0" };
    format!(
        "tail -n {lines} -f \"$log\" >&2 3<&- & tp=$!\n\
         (exec <&3 >/dev/null 2>&1; while read -r _; do :; done; kill -s TERM $tp $$) & cp=$!\n\
         exec 3<&-\n"
    )
}

/// The end of a watcher: `$rc` is the exit status or `?`.
const FINISH: &str = r#"kill -s TERM $tp $cp 2>/dev/null
rm -f "$pidf"
echo "gateway-lite:exit $rc"
tail -n 20 "$log"
"#;

/// Starts `argv` detached with `env` and watches it. With `secret`, the first line the
/// script reads on its stdin is the launch secret, exported as `KERNEL_LAUNCHER_SECRET`:
/// a secret in the script itself would show in `ps` on both hosts.
pub(super) fn launch_script(
    log: &str,
    pid_file: &str,
    kernel_ip: &str,
    env: &[(String, String)],
    argv: &[String],
    secret: bool,
) -> String {
    let read_secret = if secret {
        "IFS= read -r KERNEL_LAUNCHER_SECRET || exit 125; export KERNEL_LAUNCHER_SECRET\n"
    } else {
        ""
    };
    let mut cmd = format!("env KERNEL_LAUNCHER_IP={}", quote(kernel_ip));
    for (k, v) in env {
        cmd.push(' ');
        cmd.push_str(&quote(&format!("{k}={v}")));
    }
    cmd.push_str(" setsid");
    for a in argv {
        cmd.push(' ');
        cmd.push_str(&quote(a));
    }
    format!(
        "{PRELUDE}{read_secret}log={log}; pidf={pidf}\n\
         umask 077\n\
         mkdir -p {dir} 2>/dev/null\n\
         : >>\"$log\" || {{ echo \"cannot write the launcher log $log on $(hostname)\" >&2; exit 125; }}\n\
         exec 3<&0 </dev/null\n\
         {cmd} >>\"$log\" 2>&1 3<&- &\n\
         pid=$!; t=$(st $pid)\n\
         echo \"$pid $t\" >\"$pidf.tmp\" && mv -f \"$pidf.tmp\" \"$pidf\"\n\
         echo \"{STARTED}$pid $t\"\n\
         {follow}\
         wait $pid; rc=$?\n\
         {FINISH}",
        log = quote(log),
        pidf = quote(pid_file),
        dir = quote(
            log.rsplit_once('/')
                .map_or(".", |(d, _)| if d.is_empty() { "/" } else { d })
        ),
        follow = follow(true),
    )
}

/// Watches the launcher recorded in `pid_file`, or says it is gone.
pub(super) fn reattach_script(log: &str, pid_file: &str) -> String {
    format!(
        "{PRELUDE}log={log}; pidf={pidf}\n\
         set -- $(cat \"$pidf\" 2>/dev/null); pid=${{1:-}}; t=${{2:-}}\n\
         if [ -z \"$pid\" ] || [ -z \"$t\" ] || [ \"$(st \"$pid\")\" != \"$t\" ]; then echo {GONE}; exit 0; fi\n\
         echo \"{STARTED}$pid $t\"\n\
         exec 3<&0 </dev/null\n\
         {follow}\
         while [ \"$(st \"$pid\")\" = \"$t\" ]; do nap; done\n\
         rc='?'\n\
         {FINISH}",
        log = quote(log),
        pidf = quote(pid_file),
        follow = follow(false),
    )
}

/// Sends `signal` to the recorded launcher's process group if it is still the same process.
pub(super) fn signal_script(pid_file: &str, signal: Signal) -> String {
    let name = signal.as_str().trim_start_matches("SIG");
    format!(
        "{PRELUDE}set -- $(cat {pidf} 2>/dev/null)\n\
         [ -n \"${{1:-}}\" ] && [ -n \"${{2:-}}\" ] && [ \"$(st \"$1\")\" = \"$2\" ] && kill -s {name} -- \"-$1\"\n",
        pidf = quote(pid_file),
    )
}

/// SIGKILL to the process group `pgid` if its leader's environment names `kernel_id` (the
/// kernel a dead launcher left behind; a recycled pid never matches).
pub(super) fn kill_group_script(pgid: i32, kernel_id: &str) -> String {
    format!(
        "tr '\\0' '\\n' < /proc/{pgid}/environ 2>/dev/null | grep -qxF {want} && kill -s KILL -- -{pgid}\n",
        want = quote(&format!("KERNEL_ID={kernel_id}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sh` makes of `words` after quoting: each must come back as one argument.
    fn through_sh(words: &[&str]) -> Vec<String> {
        let line: Vec<String> = words.iter().map(|w| quote(w)).collect();
        let script = format!(
            "for a in {}; do printf '%s\\0' \"$a\"; done",
            line.join(" ")
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}");
        out.stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8(p.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn quoting_survives_the_shell() {
        let words = [
            "plain",
            "with space",
            "it's",
            "'",
            "$(touch /tmp/never)",
            "`id`",
            "a\"b",
            "*",
            "~",
            "a;b|c&d",
            "x=1",
            "-n",
            "tab\there",
            "\\",
            "ünïcode",
        ];
        assert_eq!(through_sh(&words), words);
        // Quoting twice (as for the login shell's `sh -c`) and unquoting twice is the identity.
        let inner = format!("printf '%s' {}", quote("it's $HOME"));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sh -c {}", quote(&inner)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn scripts_parse() {
        let env = vec![("KERNEL_USERNAME".to_owned(), "o'brien x".to_owned())];
        let argv = vec!["/opt/kl".to_owned(), "--".to_owned(), "py thon".to_owned()];
        for script in [
            launch_script(
                "/tmp/a b.log",
                "/tmp/a b.pid",
                "10.0.0.2",
                &env,
                &argv,
                true,
            ),
            launch_script(
                "/tmp/a b.log",
                "/tmp/a b.pid",
                "10.0.0.2",
                &env,
                &argv,
                false,
            ),
            reattach_script("/tmp/x.log", "/tmp/x.pid"),
            signal_script("/tmp/x.pid", Signal::SIGTERM),
            kill_group_script(123, "k-1"),
        ] {
            let st = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .status()
                .unwrap();
            assert!(st.success(), "sh -n rejects:\n{script}");
        }
        assert!(signal_script("/p", Signal::SIGINT).contains("kill -s INT -- \"-$1\""));
    }

    #[test]
    fn start_time_function_matches_proc() {
        let me = std::process::id();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{PRELUDE}st {me}; st 999999999 || echo none"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let field22 = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(19)
            .unwrap();
        assert_eq!(text, format!("{field22}\nnone\n"));
    }
}
