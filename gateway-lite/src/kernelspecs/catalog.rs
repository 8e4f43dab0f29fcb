//! The kernelspecs on disk now.
//!
//! Operators install, edit and remove kernelspecs while the gateway runs, as they do under
//! Jupyter Server, and expect `GET /api/kernelspecs`, `GET /api/kernelspecs/{name}` and a
//! launch to reflect the directories as they are. So the catalog re-reads them when a request
//! needs the specs and its last look is older than [`FRESH_FOR`]; within that moment every
//! request shares one snapshot. A scan is a directory listing per search directory and one
//! small file read per spec, run on the blocking pool; concurrent requests wait for the one
//! scan under way instead of starting their own. So the cost is bounded (at most one scan per
//! [`FRESH_FOR`], and none while nobody asks) and a change is seen within [`FRESH_FOR`].
//!
//! File-system notifications (`inotify`, the `notify` crate) were not chosen: the search
//! directories often do not exist yet (`~/.local/share/jupyter/kernels` appears when the first
//! spec is installed), a watch misses changes on network file systems, and a watcher is a
//! long-lived task with its own failure modes, all to save a few reads that only happen when a
//! client asks.
//!
//! What changed is logged when it is seen, once: a spec added, changed or removed (with the
//! warning for a spec whose launches are refused, see [`super::proxy`]), and a `kernel.json`
//! that cannot be read, once per distinct problem, not per request. A broken file takes only
//! its own name down: as in Jupyter, the first directory holding a name's `kernel.json` owns
//! the name, readable or not. The embedded `python3` spec is part of every snapshot in which
//! no readable `python3` spec is found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proxy::Runner;
use super::spec::{KernelSpec, read_spec};
use crate::tasks::Tasks;

/// How long one scan's result is served before the directories are read again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// The kernelspecs found by one scan, and the default among them.
#[derive(Debug, Clone, Default)]
pub struct KernelSpecs {
    specs: BTreeMap<String, KernelSpec>,
    default: String,
}

impl KernelSpecs {
    /// `specs`, with `default` as the default when it is among them, else `python3`, else
    /// the first by name.
    pub fn new(specs: BTreeMap<String, KernelSpec>, default: Option<&str>) -> Self {
        let default = default
            .filter(|d| specs.contains_key(*d))
            .map(str::to_owned)
            .or_else(|| specs.contains_key("python3").then(|| "python3".to_owned()))
            .or_else(|| specs.keys().next().cloned())
            .unwrap_or_default();
        KernelSpecs { specs, default }
    }

    /// The spec called `name`.
    pub fn get(&self, name: &str) -> Option<&KernelSpec> {
        self.specs.get(name)
    }

    /// The default spec's name.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Every spec, by name.
    pub fn iter(&self) -> impl Iterator<Item = &KernelSpec> {
        self.specs.values()
    }
}

/// The kernelspecs in the search directories, re-read on demand.
#[derive(Debug)]
pub struct Catalog {
    roots: Vec<PathBuf>,
    default: Option<String>,
    launcher: PathBuf,
    fresh_for: Duration,
    tasks: Tasks,
    seen: tokio::sync::Mutex<Seen>,
}

/// The last scan and what was logged about it.
#[derive(Debug, Default)]
struct Seen {
    specs: Option<Arc<KernelSpecs>>,
    at: Option<Instant>,
    /// Unreadable `kernel.json` files and their problem, as last logged.
    problems: BTreeMap<PathBuf, String>,
    /// The configured default was missing in the last snapshot.
    default_missing: bool,
}

/// What one pass over the search directories found.
#[derive(Debug, Default)]
struct Scan {
    specs: BTreeMap<String, KernelSpec>,
    problems: BTreeMap<PathBuf, String>,
}

impl Catalog {
    /// A catalog of the specs under `roots` (in search order; see [`super::search`]), with
    /// `default` as the default spec when it is found. `launcher` is the kernel-launcher
    /// binary (a spec that runs another launcher is logged as unauthenticated); scans run on
    /// `tasks`' blocking pool.
    pub fn new(
        roots: Vec<PathBuf>,
        default: Option<String>,
        launcher: PathBuf,
        tasks: Tasks,
    ) -> Self {
        Catalog {
            roots,
            default,
            launcher,
            fresh_for: FRESH_FOR,
            tasks,
            seen: tokio::sync::Mutex::default(),
        }
    }

    /// The same catalog, re-reading after `fresh_for` instead of [`FRESH_FOR`].
    pub fn fresh_for(mut self, fresh_for: Duration) -> Self {
        self.fresh_for = fresh_for;
        self
    }

    /// The search directories, in order.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The specs as the directories hold them now (at most [`FRESH_FOR`] old).
    pub async fn current(&self) -> Arc<KernelSpecs> {
        let mut seen = self.seen.lock().await;
        if let (Some(specs), Some(at)) = (&seen.specs, seen.at)
            && at.elapsed() < self.fresh_for
        {
            return specs.clone();
        }
        let roots = self.roots.clone();
        match self.tasks.spawn_blocking(move || scan(&roots)).await {
            Ok(found) => self.take(&mut seen, found),
            Err(e) => tracing::warn!("reading the kernelspec directories failed: {e}"),
        }
        seen.at = Some(Instant::now());
        seen.specs.clone().unwrap_or_default()
    }

    /// Makes `found` the current snapshot, logging what changed since the last one.
    fn take(&self, seen: &mut Seen, found: Scan) {
        for (path, problem) in &found.problems {
            if seen.problems.get(path) != Some(problem) {
                tracing::warn!("skipping kernelspec: {problem}; other kernelspecs are served");
            }
        }
        seen.problems = found.problems;
        let mut specs = found.specs;
        if !specs.contains_key("python3") {
            specs.insert("python3".into(), KernelSpec::embedded_python3());
        }
        let new = KernelSpecs::new(specs, self.default.as_deref());
        let old = seen.specs.as_deref();
        for spec in new.iter() {
            match old.map(|o| o.get(&spec.name)) {
                None => self.announce(spec, "kernelspec"),
                Some(None) => self.announce(spec, "kernelspec added"),
                Some(Some(before)) if !same(before, spec) => {
                    self.announce(spec, "kernelspec changed");
                }
                Some(Some(_)) => {}
            }
        }
        for spec in old.iter().flat_map(|o| o.iter()) {
            if new.get(&spec.name).is_none() {
                tracing::info!(name = %spec.name, "kernelspec removed");
            }
        }
        if let Some(want) = &self.default {
            let missing = new.get(want).is_none();
            if missing && !seen.default_missing {
                tracing::warn!(
                    "--default-kernel-name {want}: no such kernelspec is found; the default is {} \
                     until one is installed",
                    new.default_name()
                );
            }
            seen.default_missing = missing;
        }
        seen.specs = Some(Arc::new(new));
    }

    /// Logs a spec that appeared or changed.
    fn announce(&self, spec: &KernelSpec, what: &str) {
        let dir = spec
            .dir
            .as_deref()
            .map_or("(embedded)".into(), |d| d.display().to_string());
        tracing::info!(name = %spec.name, dir, runner = spec.runner.label(), wrapped = !spec.runs_launcher(), "{what}");
        if spec.dir.is_none() {
            tracing::info!(
                "no python3 kernelspec is found; serving the embedded one (python3 -m ipykernel_launcher)"
            );
        }
        if let Runner::Refused(why) = &spec.runner {
            tracing::warn!(
                name = %spec.name,
                class = %why.class,
                "kernelspec {} is listed, but launching it is refused: {why}",
                spec.name
            );
        } else if !spec.authenticated(&self.launcher) {
            tracing::warn!(
                name = %spec.name,
                launcher = %spec.argv[0],
                "kernelspec runs another launcher: its launch payloads and comm port are not authenticated (Enterprise Gateway's behaviour)"
            );
        }
    }
}

/// Whether two reads of a spec are the same spec.
fn same(a: &KernelSpec, b: &KernelSpec) -> bool {
    a.dir == b.dir && a.spec == b.spec
}

/// Reads every root: the first directory holding a name's `kernel.json` owns the name.
fn scan(roots: &[PathBuf]) -> Scan {
    let mut found = Scan::default();
    let mut taken = std::collections::BTreeSet::new();
    for root in roots {
        for (name, dir) in spec_dirs(root) {
            if !taken.insert(name.clone()) {
                continue;
            }
            match read_spec(&name, &dir) {
                Ok(spec) => {
                    found.specs.insert(name, spec);
                }
                Err(e) => {
                    found
                        .problems
                        .insert(dir.join("kernel.json"), e.to_string());
                }
            }
        }
    }
    found
}

/// `(name, dir)` for each `root/<name>/kernel.json`, sorted by name; a `root` that itself holds
/// `kernel.json` counts as one spec named after it.
fn spec_dirs(root: &Path) -> Vec<(String, PathBuf)> {
    let name_of = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    if root.join("kernel.json").is_file() {
        return name_of(root)
            .map(|n| (n, root.to_path_buf()))
            .into_iter()
            .collect();
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = name_of(&path)?;
            path.join("kernel.json").is_file().then_some((name, path))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            let d = std::env::temp_dir().join(format!("gl-catalog-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }

        fn spec(&self, root: &str, name: &str, doc: &str) {
            let d = self.0.join(root).join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("kernel.json"), doc).unwrap();
        }

        fn catalog(&self, roots: &[&str], default: Option<&str>) -> Catalog {
            Catalog::new(
                roots.iter().map(|r| self.0.join(r)).collect(),
                default.map(str::to_owned),
                PathBuf::from("/bin/kernel-launcher"),
                Tasks::new(),
            )
            .fresh_for(Duration::ZERO)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const IR: &str = r#"{"argv": ["R", "-f", "{connection_file}"], "language": "R"}"#;
    const PY: &str = r#"{"argv": ["py", "{connection_file}"], "language": "python"}"#;

    #[tokio::test]
    async fn python3_is_offered_unless_one_is_installed() {
        let d = Dir::new();
        d.spec("a", "ir", IR);
        let catalog = d.catalog(&["a"], None);
        let specs = catalog.current().await;
        assert!(specs.get("ir").is_some());
        assert!(
            specs.get("python3").is_some_and(|s| s.dir.is_none()),
            "embedded python3 next to ir"
        );
        assert_eq!(specs.default_name(), "python3");
        d.spec("a", "python3", PY);
        let specs = catalog.current().await;
        assert!(
            specs.get("python3").is_some_and(|s| s.dir.is_some()),
            "an installed python3 wins"
        );
        std::fs::remove_dir_all(d.0.join("a/python3")).unwrap();
        assert!(
            catalog
                .current()
                .await
                .get("python3")
                .is_some_and(|s| s.dir.is_none()),
            "the embedded one is back once the installed one is gone"
        );
        // A broken python3 is no python3: the embedded one is served.
        d.spec("a", "python3", "{not json");
        assert!(
            catalog
                .current()
                .await
                .get("python3")
                .is_some_and(|s| s.dir.is_none())
        );
    }

    #[tokio::test]
    async fn changes_are_seen_and_broken_files_hide_only_their_name() {
        let d = Dir::new();
        d.spec("first", "k", r#"{"argv": ["one"], "display_name": "One"}"#);
        d.spec("second", "k", r#"{"argv": ["two"]}"#);
        d.spec("second", "other", r#"{"argv": ["x"]}"#);
        let catalog = d.catalog(&["first", "second"], Some("k"));
        let specs = catalog.current().await;
        assert_eq!(
            specs.get("k").unwrap().argv,
            ["one"],
            "the first directory wins"
        );
        assert_eq!(specs.default_name(), "k");

        d.spec("first", "k", r#"{"argv": ["uno"], "display_name": "Uno"}"#);
        let specs = catalog.current().await;
        assert_eq!(specs.get("k").unwrap().argv, ["uno"]);
        assert_eq!(specs.get("k").unwrap().spec["display_name"], "Uno");

        d.spec("first", "k", r#"{"argv": "#);
        let specs = catalog.current().await;
        assert!(
            specs.get("k").is_none(),
            "a broken spec owns its name, as in Jupyter"
        );
        assert!(specs.get("other").is_some(), "other specs are still served");
        assert_eq!(specs.default_name(), "python3");

        std::fs::remove_dir_all(d.0.join("first/k")).unwrap();
        let specs = catalog.current().await;
        assert_eq!(
            specs.get("k").unwrap().argv,
            ["two"],
            "the next directory's k"
        );
        std::fs::remove_dir_all(d.0.join("second")).unwrap();
        let specs = catalog.current().await;
        assert!(specs.get("k").is_none() && specs.get("other").is_none());
    }

    #[tokio::test]
    async fn a_fresh_snapshot_is_shared() {
        let d = Dir::new();
        d.spec("a", "ir", IR);
        let catalog = d.catalog(&["a"], None).fresh_for(Duration::from_secs(3600));
        let first = catalog.current().await;
        std::fs::remove_dir_all(d.0.join("a/ir")).unwrap();
        let second = catalog.current().await;
        assert!(
            Arc::ptr_eq(&first, &second),
            "no scan within the fresh period"
        );
        assert!(second.get("ir").is_some());
    }

    #[test]
    fn a_root_may_be_one_spec() {
        let d = Dir::new();
        d.spec("a", "ir", IR);
        let found = scan(&[d.0.join("a/ir"), d.0.join("missing")]);
        assert_eq!(found.specs.keys().collect::<Vec<_>>(), ["ir"]);
        assert!(found.problems.is_empty());
    }
}
