//! `cargo xtask test` and `cargo xtask demo` refuse to run without root, saying why.

use std::process::Command;

/// Runs the xtask binary with `args` as an unprivileged user (nobody), or as ourselves when we
/// are not root already.
fn run_unprivileged(args: &[&str]) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_xtask");
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc_geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).output().expect("running xtask")
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[test]
fn test_and_demo_say_root_is_needed() {
    for task in ["test", "demo"] {
        let out = run_unprivileged(&[task]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "xtask {task} succeeded without root");
        assert!(
            stderr.contains("needs root"),
            "xtask {task} without root should say root is needed, said: {stderr}"
        );
    }
}
