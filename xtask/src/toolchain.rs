//! Installs what building the eBPF crate needs, so that a fresh machine needs no hand step:
//! the nightly's `rust-src` component (for `-Z build-std=core`) and `bpf-linker` built against the
//! nightly's own libLLVM.
//!
//! Shared, as one file, by `cargo xtask` and by gateway-agent's build.rs (which includes it with
//! `#[path]`), so `cargo build -p gateway-agent` sets the toolchain up by itself too. Std only: a
//! build script cannot lean on the xtask's dependencies.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The toolchain the eBPF crate builds with.
pub const EBPF_TOOLCHAIN: &str = "nightly";
/// The bpf-linker release line installed (its `llvm-N` features must cover the nightly's LLVM).
const BPF_LINKER_VERSION: &str = "^0.13";

/// What the nightly reports about itself (`rustc +nightly -vV`).
struct Nightly {
    sysroot: PathBuf,
    llvm_major: String,
    /// `release` + `commit-hash` + `LLVM version`: names the libLLVM bpf-linker was linked with.
    identity: String,
}

/// Makes sure the nightly has `rust-src` and a working `bpf-linker` linked to its libLLVM is on
/// `$CARGO_HOME/bin`. `log` receives one line per action taken. Errors name the missing piece.
pub fn ensure_ebpf_toolchain(log: &mut dyn FnMut(&str)) -> Result<(), String> {
    let nightly = nightly()?;
    ensure_rust_src(log)?;
    ensure_bpf_linker(&nightly, log)
}

fn run_capture(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `Command` with the variables cargo sets for build scripts removed, so that a nested cargo or
/// rustup behaves as if run from a shell.
fn clean_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let nested_cargo_var = key.starts_with("CARGO_")
            && key != "CARGO_HOME"
            && !key.starts_with("CARGO_NET")
            && !key.starts_with("CARGO_REGISTRIES");
        if nested_cargo_var
            || matches!(
                key.as_str(),
                "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTUP_TOOLCHAIN"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
            )
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

fn nightly() -> Result<Nightly, String> {
    let vv = run_capture(clean_command("rustc").args([&format!("+{EBPF_TOOLCHAIN}"), "-vV"]))
        .map_err(|e| {
            format!(
                "the {EBPF_TOOLCHAIN} toolchain is needed to build the eBPF programs and could not be \
                 run ({e}); install it with `rustup toolchain install {EBPF_TOOLCHAIN}`"
            )
        })?;
    let field = |name: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let llvm = field("LLVM version:").ok_or("rustc +nightly -vV printed no LLVM version")?;
    let llvm_major = llvm.split('.').next().unwrap_or_default().to_string();
    let identity = format!(
        "{} {} llvm {llvm}",
        field("release:").unwrap_or_default(),
        field("commit-hash:").unwrap_or_default()
    );
    let sysroot = run_capture(clean_command("rustc").args([
        &format!("+{EBPF_TOOLCHAIN}"),
        "--print",
        "sysroot",
    ]))?;
    Ok(Nightly {
        sysroot: PathBuf::from(sysroot.trim()),
        llvm_major,
        identity,
    })
}

fn ensure_rust_src(log: &mut dyn FnMut(&str)) -> Result<(), String> {
    let installed = run_capture(clean_command("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    log(&format!(
        "installing rust-src for the {EBPF_TOOLCHAIN} toolchain"
    ));
    run_capture(clean_command("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .map_err(|e| {
        format!("rust-src is needed for -Z build-std=core and could not be installed: {e}")
    })?;
    Ok(())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Where bpf-linker is (to be) installed, and the file recording which nightly it was linked with.
fn bpf_linker_paths() -> (PathBuf, PathBuf) {
    let home = cargo_home();
    (
        home.join("bin").join("bpf-linker"),
        home.join("nodegate").join("bpf-linker.stamp"),
    )
}

/// Returns the directory holding the `bpf-linker` that matches the nightly (for `PATH`).
pub fn bpf_linker_dir() -> PathBuf {
    bpf_linker_paths()
        .0
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn ensure_bpf_linker(nightly: &Nightly, log: &mut dyn FnMut(&str)) -> Result<(), String> {
    let (linker, stamp) = bpf_linker_paths();
    // The prefix whose lib/ holds libLLVM.so: bpf-linker's build links against it and records
    // lib/ as its RUNPATH, so it lives for good under CARGO_HOME (refreshed on every call, so an
    // updated nightly re-points it).
    let prefix = cargo_home()
        .join("nodegate")
        .join(format!("llvm-{}", nightly.llvm_major));
    link_nightly_llvm(&nightly.sysroot, &prefix.join("lib"))?;

    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let stamped = fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == nightly.identity);
    if works && stamped {
        return Ok(());
    }
    log(&format!(
        "building bpf-linker against the {EBPF_TOOLCHAIN} toolchain's LLVM {} (about a minute)",
        nightly.llvm_major
    ));
    let out = clean_command("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{}", nightly.llvm_major),
        ])
        .env("LLVM_PREFIX", &prefix)
        .output()
        .map_err(|e| format!("cannot run cargo install bpf-linker: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        return Err(format!(
            "bpf-linker (needed to link the eBPF programs) could not be built against LLVM {} \
             from {}:\n{}",
            nightly.llvm_major,
            prefix.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    if let Some(dir) = stamp.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::write(&stamp, &nightly.identity).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(())
}

/// Points `lib/libLLVM.so` and `lib/libLLVM.so.<ver>` at the nightly's real shared libLLVM (its
/// `libLLVM-<major>-rust-*.so` is a linker script, which bpf-linker's build cannot use).
fn link_nightly_llvm(sysroot: &Path, lib: &Path) -> Result<(), String> {
    let sys_lib = sysroot.join("lib");
    let real = fs::read_dir(&sys_lib)
        .map_err(|e| format!("{}: {e}", sys_lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .ok_or_else(|| {
            format!(
                "no libLLVM.so.* in {}: the {EBPF_TOOLCHAIN} toolchain ships no shared LLVM to \
                 build bpf-linker against",
                sys_lib.display()
            )
        })?;
    fs::create_dir_all(lib).map_err(|e| format!("{}: {e}", lib.display()))?;
    let versioned = real.file_name().map(PathBuf::from).unwrap_or_default();
    for name in [PathBuf::from("libLLVM.so"), versioned] {
        let link = lib.join(name);
        let current = fs::read_link(&link).ok();
        if current.as_deref() != Some(real.as_path()) {
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&real, &link)
                .map_err(|e| format!("symlink {}: {e}", link.display()))?;
        }
    }
    Ok(())
}
