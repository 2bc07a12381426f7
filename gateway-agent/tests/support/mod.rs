//! Running the real agent binary inside a test topology's gateway namespace.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use testbed::{GATEWAY_CLIENT_IFACE, TempBpffs, Topology};

/// The admin endpoint inside the gateway namespace.
pub const ADMIN: &str = "127.0.0.1:9901";

/// The entries of the BPF map pinned at `bpffs/<map>`, as `bpftool -j map dump` prints them
/// (with BTF, each has a "formatted" rendering with the field names).
pub fn pinned_map_entries(bpffs: &Path, map: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let json = testbed::sh(
        "bpftool",
        &[
            "-j",
            "map",
            "dump",
            "pinned",
            &bpffs.join(map).to_string_lossy(),
        ],
    )?;
    match serde_json::from_str(&json).context("bpftool JSON")? {
        serde_json::Value::Array(entries) => Ok(entries),
        other => bail!("bpftool printed {other}, not an array of entries"),
    }
}

/// A YAML config directory written for one test, removed on drop.
pub struct ConfigDir {
    path: PathBuf,
}

impl ConfigDir {
    /// Writes `files` (name, contents) into a fresh directory.
    pub fn new(tag: &str, files: &[(&str, &str)]) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "nodegate-config-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        for (name, text) in files {
            std::fs::write(path.join(name), text)?;
        }
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The agent binary under test, running in `topo.gateway`. Killed on drop if still running.
pub struct Agent {
    child: Option<Child>,
    /// Where its maps are pinned.
    pub bpffs: PathBuf,
    gateway: Option<testbed::Netns>,
    admin: SocketAddr,
    /// The agent's stderr (its tracing log), printed when a test fails.
    pub log_path: PathBuf,
}

impl Agent {
    /// Starts `gateway-agent run` on `config` attached to both gateway interfaces, and waits for
    /// /readyz.
    pub fn start(
        topo: &Topology,
        bpffs: &TempBpffs,
        config: &Path,
        attach: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(topo, bpffs, config, attach, &[])
    }

    /// [`Agent::start`] with extra `run` arguments.
    pub fn start_with(
        topo: &Topology,
        bpffs: &TempBpffs,
        config: &Path,
        attach: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_on(
            topo,
            bpffs,
            config,
            attach,
            &[GATEWAY_CLIENT_IFACE, testbed::GATEWAY_BACKEND_IFACE],
            extra,
        )
    }

    /// [`Agent::start_with`] with the given `--interface` values instead of both gateway
    /// interfaces.
    pub fn start_on(
        topo: &Topology,
        bpffs: &TempBpffs,
        config: &Path,
        attach: &str,
        interfaces: &[&str],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let log_path =
            std::env::temp_dir().join(format!("nodegate-agent-{}-{}.log", topo.prefix(), attach));
        let log = std::fs::File::create(&log_path)?;
        let child = topo
            .gateway
            .command(env!("CARGO_BIN_EXE_gateway-agent"))
            .args([
                "--log",
                "info,gateway_agent=debug,gateway_ebpf=debug",
                "run",
                "--config-dir",
            ])
            .arg(config)
            .args(interfaces.iter().flat_map(|i| ["--interface", i]))
            .args(["--attach", attach, "--bpffs"])
            .arg(bpffs.path())
            .args(["--admin-address", ADMIN])
            .args(extra)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning gateway-agent")?;
        let mut agent = Agent {
            child: Some(child),
            bpffs: bpffs.path().to_path_buf(),
            gateway: Some(topo.gateway.clone()),
            admin: ADMIN.parse()?,
            log_path,
        };
        testbed::wait_for(Duration::from_secs(20), "the agent's /readyz", || {
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(|c| c.try_wait()) {
                panic!("gateway-agent exited before it was ready: {status}");
            }
            match agent.get("/readyz") {
                Ok((200, _)) => Some(()),
                _ => None,
            }
        })?;
        Ok(agent)
    }

    /// GET from the admin endpoint (inside the gateway namespace, if any).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let admin = self.admin;
        let path = path.to_string();
        match &self.gateway {
            Some(ns) => ns.run(move || testbed::http_get(admin, &path))?,
            None => testbed::http_get(admin, &path),
        }
    }

    /// Starts the agent in this namespace with no interface attached (the L7 side on loopback),
    /// listeners bound to 127.0.0.1, the admin endpoint on `admin`.
    pub fn start_local(
        bpffs: &TempBpffs,
        config: &Path,
        admin: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::start_local_with(bpffs, config, admin, &[])
    }

    /// [`Agent::start_local`] with extra `run` arguments.
    pub fn start_local_with(
        bpffs: &TempBpffs,
        config: &Path,
        admin: SocketAddr,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let log_path = std::env::temp_dir().join(format!(
            "nodegate-agent-local-{}-{}.log",
            std::process::id(),
            admin.port()
        ));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(env!("CARGO_BIN_EXE_gateway-agent"))
            .args(["--log", "info,gateway_agent=debug", "run", "--config-dir"])
            .arg(config)
            .args(["--bind-address", "127.0.0.1", "--access-log", "--bpffs"])
            .arg(bpffs.path())
            .args(["--admin-address", &admin.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning gateway-agent")?;
        let mut agent = Agent {
            child: Some(child),
            bpffs: bpffs.path().to_path_buf(),
            gateway: None,
            admin,
            log_path,
        };
        testbed::wait_for(Duration::from_secs(20), "the agent's /readyz", || {
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "gateway-agent exited before it was ready: {status}\n{}",
                    agent.log()
                );
            }
            match agent.get("/readyz") {
                Ok((200, _)) => Some(()),
                _ => None,
            }
        })?;
        Ok(agent)
    }

    /// /metrics, which must answer 200.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(body)
    }

    /// Sends SIGTERM without waiting (see [`Agent::wait_exit`]).
    pub fn stop_async_term(&mut self) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("agent already stopped")?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        Ok(())
    }

    /// Waits for the agent to exit; the exit status must be success.
    pub fn wait_exit(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("agent already stopped")?;
        let status = child.wait()?;
        if !status.success() {
            bail!("gateway-agent exited with {status}");
        }
        Ok(())
    }

    /// SIGTERM, and the exit status must be success.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("agent already stopped")?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let status = child.wait()?;
        if !status.success() {
            bail!("gateway-agent exited with {status} after SIGTERM");
        }
        Ok(())
    }
}

impl Agent {
    /// The agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the agent has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- agent log ({}) ----\n{}",
                self.log_path.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}

impl Agent {
    /// The interfaces the programs are attached to, from `/debug/dataplane`, sorted.
    pub fn attached_interfaces(&self) -> anyhow::Result<Vec<String>> {
        let (status, body) = self.get("/debug/dataplane")?;
        if status != 200 {
            bail!("/debug/dataplane answered {status}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let mut names: Vec<String> = v["attachments"]
            .as_array()
            .context("attachments")?
            .iter()
            .filter_map(|a| a["interface"].as_str().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The ids of the programs the agent attached, from `/debug/dataplane`.
    pub fn program_ids(&self) -> anyhow::Result<Vec<u64>> {
        let (status, body) = self.get("/debug/dataplane")?;
        if status != 200 {
            bail!("/debug/dataplane answered {status}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["attachments"]
            .as_array()
            .context("attachments")?
            .iter()
            .filter_map(|a| a["programId"].as_u64())
            .collect())
    }
}
