//! Standalone source: every `*.yaml` / `*.yml` under a directory (recursively, multi-document),
//! re-read when anything under it changes (debounced). A file with a document that does not parse is
//! reported with its path and line, and the objects last read from that file stay in force, so one
//! bad edit never takes down the rest of the configuration.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use gateway_model::{Object, Objects};
use tokio::sync::mpsc;

/// How long the directory must stay quiet before it is re-read: a burst of writes makes one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// A problem with one file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// The objects of a config directory, per file, with the last good version of each file kept.
#[derive(Debug, Default)]
pub struct ConfigDir {
    files: BTreeMap<PathBuf, Vec<Object>>,
}

/// What one read of the directory produced.
#[derive(Debug)]
pub struct Reading {
    /// Every object in force (good files as read now, bad files as last read well).
    pub objects: Objects,
    /// Files that did not parse this time.
    pub errors: Vec<FileError>,
}

impl ConfigDir {
    /// Reads every YAML file under `dir`. Files that parse replace what they held before; files
    /// that do not keep their last good objects (none, on the first read) and are reported.
    pub fn read(&mut self, dir: &Path) -> anyhow::Result<Reading> {
        let mut seen = BTreeMap::new();
        let mut errors = Vec::new();
        for path in yaml_files(dir)? {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(FileError {
                        path: path.clone(),
                        line: None,
                        message: e.to_string(),
                    });
                    if let Some(old) = self.files.get(&path) {
                        seen.insert(path, old.clone());
                    }
                    continue;
                }
            };
            let origin = path.display().to_string();
            let (objects, file_errors) = parse_file(&origin, &text, &path);
            if file_errors.is_empty() {
                seen.insert(path, objects);
            } else {
                errors.extend(file_errors);
                if let Some(old) = self.files.get(&path) {
                    seen.insert(path, old.clone());
                }
            }
        }
        self.files = seen;
        let mut objects = Objects::default();
        for object in self.files.values().flatten() {
            objects.insert(object.clone());
        }
        Ok(Reading { objects, errors })
    }
}

/// Parses one file's documents; unknown kinds are skipped by the model's parser.
fn parse_file(origin: &str, text: &str, path: &Path) -> (Vec<Object>, Vec<FileError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for result in gateway_model::parse::parse_documents(origin, text) {
        match result {
            Ok(object) => objects.push(object),
            Err(e) => errors.push(FileError {
                path: path.to_path_buf(),
                line: e.line,
                message: e.message,
            }),
        }
    }
    (objects, errors)
}

/// Every `*.yaml` / `*.yml` file under `dir`, sorted, hidden entries (such as Kubernetes'
/// `..data` ConfigMap links) skipped.
fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Watches `dir` and sends `()` once per burst of changes (after [`DEBOUNCE`] of quiet). The
/// returned watcher must be kept alive.
pub fn watch(dir: &Path) -> anyhow::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    use notify::Watcher as _;
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            let _ = raw_tx.send(());
        }
    })
    .context("creating a file watcher")?;
    watcher
        .watch(dir, notify::RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Wait for quiet: every further event restarts the timer.
            loop {
                match tokio::time::timeout(DEBOUNCE, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok((watcher, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: g\n  namespace: default\nspec:\n  gatewayClassName: nodegate\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: 80\n";

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("nodegate-filesource-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        d
    }

    #[test]
    fn reads_yaml_recursively_and_skips_other_files() {
        let d = dir("recursive");
        std::fs::write(d.join("a.yaml"), GATEWAY).unwrap();
        std::fs::write(d.join("sub/b.yml"), GATEWAY.replace("name: g", "name: h")).unwrap();
        std::fs::write(d.join("notes.txt"), "not yaml: [").unwrap();
        let reading = ConfigDir::default().read(&d).unwrap();
        assert!(reading.errors.is_empty(), "{:?}", reading.errors);
        assert_eq!(reading.objects.len(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_objects_and_reports_the_line() {
        let d = dir("lastgood");
        std::fs::write(d.join("a.yaml"), GATEWAY).unwrap();
        std::fs::write(d.join("b.yaml"), GATEWAY.replace("name: g", "name: other")).unwrap();
        let mut config = ConfigDir::default();
        assert_eq!(config.read(&d).unwrap().objects.len(), 2);

        // Line 4 loses its indentation: not valid YAML any more.
        std::fs::write(
            d.join("a.yaml"),
            GATEWAY.replace("  name: g", "name: g\n  - :"),
        )
        .unwrap();
        let reading = config.read(&d).unwrap();
        assert_eq!(reading.objects.len(), 2, "a.yaml's last good Gateway stays");
        assert_eq!(reading.errors.len(), 1);
        let err = &reading.errors[0];
        assert!(err.path.ends_with("a.yaml"));
        assert!(err.line.is_some(), "the error names a line: {err}");

        // A broken file that never parsed contributes nothing, and takes nothing else down.
        std::fs::write(d.join("c.yaml"), "kind: [").unwrap();
        let reading = config.read(&d).unwrap();
        assert_eq!(reading.objects.len(), 2);
        assert_eq!(reading.errors.len(), 2);

        // Deleting a file removes its objects.
        std::fs::remove_file(d.join("b.yaml")).unwrap();
        assert_eq!(config.read(&d).unwrap().objects.len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
