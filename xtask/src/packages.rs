//! System tools the tests and demo use, installed with apt-get when missing.

use std::process::Command;

use anyhow::{Context as _, bail};

/// (binary looked up on PATH, Debian package providing it).
pub type Tool = (&'static str, &'static str);

/// What the end-to-end tests and the demo run.
pub const TEST_TOOLS: &[Tool] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("bpftool", "bpftool"),
    ("mount", "mount"),
    ("openssl", "openssl"),
];

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(binary).is_file())
}

/// Installs the packages of the tools that are not on PATH (apt-get update once, then install).
pub fn ensure(tools: &[Tool]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get (a Debian-like system is expected)")?;
        if !status.success() {
            bail!("apt-get {} failed", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args).with_context(|| {
        format!(
            "installing {} (needed by the tests and demo)",
            missing.join(", ")
        )
    })
}
