//! Starting the processes a benchmark compares, pinned to a CPU inside a namespace: the agent,
//! nginx and haproxy. Each is stopped (SIGTERM, then SIGKILL) and its scratch directory removed
//! when dropped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use testbed::Netns;

/// `ip netns exec NS taskset -c CPU program`: `taskset` and `ip netns exec` both exec, so the
/// child's pid is the program's own.
pub fn pinned(ns: &Netns, cpu: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = ns.command("taskset");
    cmd.args(["-c", &cpu.to_string()]).arg(program);
    cmd
}

/// A running peer process and its scratch directory.
pub struct Peer {
    /// What it is (for messages).
    pub name: String,
    child: Child,
    dir: PathBuf,
}

impl Peer {
    /// The process id (nginx: the master; its workers are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pid and its children (the processes whose CPU and memory count).
    pub fn pids(&self) -> Vec<u32> {
        super::sys::process_tree(self.pid())
    }

    /// The last lines of the peer's log (for error messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        super::sys::stop(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh scratch directory `/tmp/nodegate-bench-<tag>-<pid>`.
pub fn scratch(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("nodegate-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Spawns `cmd` (stdout and stderr to `dir/log`) as peer `name`.
pub fn spawn(name: &str, mut cmd: Command, dir: PathBuf) -> anyhow::Result<Peer> {
    let log = std::fs::File::create(dir.join("log"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Peer {
        name: name.to_string(),
        child,
        dir,
    })
}

/// Waits until something accepts TCP connections on `addr` inside `ns`.
pub fn wait_listening(peer: &mut Peer, ns: &Netns, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        peer.check_alive()?;
        let up = ns
            .run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)))?
            .is_ok();
        if up {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{} is not listening on {addr}:\n{}",
                peer.name,
                peer.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts gateway-agent in `ns` on CPU `cpu` with `args` after `run --config-dir DIR`, and waits
/// for its admin endpoint's `/readyz` on `admin`.
pub fn agent(
    ns: &Netns,
    cpu: usize,
    bin: &Path,
    config_dir: &Path,
    admin: SocketAddr,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Peer> {
    let mut cmd = pinned(ns, cpu, bin);
    cmd.args(["--log", "warn", "run", "--config-dir"])
        .arg(config_dir)
        .args(["--admin-address", &admin.to_string()])
        .args(args)
        .envs(env.iter().copied());
    let mut peer = spawn("gateway-agent", cmd, super::peers::scratch("agent")?)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        peer.check_alive()?;
        let ready = ns
            .run(move || testbed::http_get(admin, "/readyz"))
            .ok()
            .and_then(Result::ok)
            .is_some_and(|(s, _)| s == 200);
        if ready {
            return Ok(peer);
        }
        if std::time::Instant::now() > deadline {
            bail!("the agent did not become ready:\n{}", peer.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts nginx in `ns` on CPU `cpu`: one worker, no access log, its own prefix and temp paths;
/// `http` is the body of the `http {}` block.
pub fn nginx(ns: &Netns, cpu: usize, tag: &str, http: &str) -> anyhow::Result<Peer> {
    let dir = scratch(&format!("nginx-{tag}"))?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{http}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let mut cmd = pinned(ns, cpu, "nginx");
    cmd.arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"));
    spawn(&format!("nginx ({tag})"), cmd, dir)
}

/// Starts haproxy in `ns` on CPU `cpu` in the foreground (`-db`, one process) with `config`
/// after a `global` section that sets `nbthread 1`.
pub fn haproxy(ns: &Netns, cpu: usize, tag: &str, config: &str) -> anyhow::Result<Peer> {
    let dir = scratch(&format!("haproxy-{tag}"))?;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!("global\n  nbthread 1\n  maxconn 8192\n\n{config}"),
    )?;
    let mut cmd = pinned(ns, cpu, "haproxy");
    cmd.arg("-f").arg(&cfg).arg("-db");
    spawn(&format!("haproxy ({tag})"), cmd, dir)
}
