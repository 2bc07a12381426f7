//! Builds the eBPF programs (gateway-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! `-Z build-std=core` (aya-build), after installing what that needs (rust-src, bpf-linker) if the
//! machine lacks it. The object lands in OUT_DIR and is embedded by `dataplane::loader`.

#[path = "../xtask/src/toolchain.rs"]
mod toolchain;

use std::{env, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../xtask/src/toolchain.rs");
    toolchain::ensure_ebpf_toolchain(&mut |msg| println!("cargo:warning=nodegate: {msg}"))
        .map_err(|e| anyhow::anyhow!("cannot build nodegate's eBPF programs: {e}"))?;

    // aya-build's nested cargo finds bpf-linker on PATH.
    let mut paths = vec![toolchain::bpf_linker_dir()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("PATH", env::join_paths(paths)?) };

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../gateway-ebpf").canonicalize()?;
    let ebpf_dir = ebpf_dir.to_string_lossy();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(toolchain::EBPF_TOOLCHAIN),
    )
}
