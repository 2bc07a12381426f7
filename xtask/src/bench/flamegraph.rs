//! `--flamegraph`: during a nodegate window, two `perf record -F 999 -g -e cpu-clock` sessions
//! (the agent's PID, and the whole machine with `-a` for the kernel side: XDP/TC/SK_SKB programs
//! show under their JIT names because `bpf_jit_kallsyms` is set first), folded with
//! `inferno::collapse::perf` and drawn with `inferno::flamegraph` into `DIR/flamegraphs/*.svg`.

use std::{
    io::BufReader,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
};

use anyhow::{Context as _, bail};
use inferno::collapse::Collapse as _;

/// Renders the flame graphs of every recorded window into one directory.
pub struct Recorder {
    dir: PathBuf,
    rendered: Mutex<Vec<PathBuf>>,
}

/// Two perf sessions in flight for one window.
pub struct Session {
    name: String,
    perfs: Vec<(Child, PathBuf, &'static str)>,
}

impl Recorder {
    /// Prepares `dir`, checks perf, and turns on `bpf_jit_kallsyms` so JITed programs have names
    /// (this must happen before the agent loads them).
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        crate::packages::ensure(&[("perf", "linux-perf")])?;
        std::fs::create_dir_all(dir)?;
        std::fs::write("/proc/sys/net/core/bpf_jit_kallsyms", "1")
            .context("setting net.core.bpf_jit_kallsyms=1")?;
        Ok(Recorder {
            dir: dir.to_path_buf(),
            rendered: Mutex::default(),
        })
    }

    /// Starts recording `pid` and the whole machine; `name` (e.g. `l4-nodegate-xdp`) names the
    /// SVGs.
    pub fn start(&self, name: &str, pid: u32) -> anyhow::Result<Session> {
        let mut perfs = Vec::new();
        for (kind, target) in [
            ("agent", vec!["-p".to_string(), pid.to_string()]),
            ("system", vec!["-a".into()]),
        ] {
            let data = self.dir.join(format!("{name}-{kind}.perf.data"));
            let child = Command::new("perf")
                .args(["record", "-F", "999", "-g", "-e", "cpu-clock", "-q", "-o"])
                .arg(&data)
                .args(&target)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf record")?;
            perfs.push((child, data, kind));
        }
        // perf needs a moment to synthesise the existing mappings before samples count.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(Session {
            name: name.to_string(),
            perfs,
        })
    }

    /// Stops the session's perf processes and renders `<name>-agent.svg` and `<name>-system.svg`.
    pub fn finish(&self, session: Session) -> anyhow::Result<()> {
        for (mut child, data, kind) in session.perfs {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
            let svg = self.dir.join(format!("{}-{kind}.svg", session.name));
            let title = format!(
                "{} — {}",
                session.name,
                if kind == "agent" {
                    "gateway-agent process (userspace + its syscalls)"
                } else {
                    "whole machine (perf -a: kernel, softirq, BPF programs)"
                }
            );
            let drawn = render(&data, &svg, &title)
                .with_context(|| format!("rendering {}", svg.display()))?;
            let _ = std::fs::remove_file(&data);
            if drawn {
                self.rendered.lock().unwrap().push(svg);
            } else {
                // The spliced TLS path leaves the agent idle for whole windows: nothing to draw.
                eprintln!(
                    "xtask: {}-{kind}: no samples (idle through the window), no graph",
                    session.name
                );
            }
        }
        Ok(())
    }

    /// Every SVG rendered so far.
    pub fn rendered(&self) -> Vec<PathBuf> {
        self.rendered.lock().unwrap().clone()
    }
}

/// Renders `perf script` text files (recorded elsewhere, e.g. in a kind node) into `dir`, one SVG
/// per file, named after it.
pub fn render_scripts(files: &[PathBuf], dir: &Path) -> anyhow::Result<()> {
    if files.is_empty() {
        bail!("`bench render` needs at least one --perf-script FILE");
    }
    std::fs::create_dir_all(dir)?;
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.trim_end_matches(".txt").trim_end_matches(".perf"))
            .context("file name")?
            .to_string();
        let input = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
        let folded = fold(BufReader::new(input))?;
        if folded.is_empty() {
            bail!("{}: no samples to fold", f.display());
        }
        let svg = dir.join(format!("{name}.svg"));
        draw(&folded, &svg, &name)?;
        println!("written: {}", svg.display());
    }
    Ok(())
}

/// Folds `perf script` output with inferno's perf collapser.
fn fold(reader: impl std::io::BufRead) -> anyhow::Result<Vec<u8>> {
    let mut folded = Vec::new();
    inferno::collapse::perf::Folder::from(inferno::collapse::perf::Options::default())
        .collapse(reader, &mut folded)?;
    Ok(folded)
}

/// Draws folded stacks into `svg` (and keeps them next to it as `.folded`, for grep).
fn draw(folded: &[u8], svg: &Path, title: &str) -> anyhow::Result<()> {
    std::fs::write(svg.with_extension("folded"), folded)?;
    let text = String::from_utf8_lossy(folded);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    let out = std::fs::File::create(svg)?;
    inferno::flamegraph::from_lines(&mut opts, text.lines(), std::io::BufWriter::new(out))?;
    Ok(())
}

/// `perf script` → folded stacks → SVG. Returns false, drawing nothing, if perf recorded no
/// samples (the process never ran during the window).
fn render(data: &Path, svg: &Path, title: &str) -> anyhow::Result<bool> {
    let mut script = Command::new("perf")
        .args(["script", "-i"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running perf script")?;
    let stdout = script.stdout.take().context("perf script stdout")?;
    let folded = fold(BufReader::new(stdout));
    let _ = script.wait();
    let folded = folded?;
    if folded.is_empty() {
        return Ok(false);
    }
    draw(&folded, svg, title)?;
    Ok(true)
}
