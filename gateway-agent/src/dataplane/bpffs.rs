//! Makes sure `--bpffs` is a directory on a BPF filesystem, mounting one there if it is not.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use anyhow::Context as _;

/// `statfs.f_type` of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes `dir` a directory on a bpffs. If it lies on another filesystem it gets a bpffs of its own;
/// if it cannot be created because its nearest existing ancestor is an unmounted mount point such as
/// `/sys/fs/bpf` (sysfs does not allow mkdir), a bpffs is mounted on that ancestor first.
pub fn ensure_mounted(dir: &Path) -> anyhow::Result<()> {
    if std::fs::create_dir_all(dir).is_err() {
        let ancestor = dir
            .ancestors()
            .find(|a| a.is_dir())
            .with_context(|| format!("no existing ancestor of {}", dir.display()))?;
        if !is_bpffs(ancestor)? {
            mount_bpffs(ancestor)?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if !is_bpffs(dir)? {
        mount_bpffs(dir)?;
    }
    Ok(())
}

fn mount_bpffs(dir: &Path) -> anyhow::Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting a bpffs at {}", dir.display()));
    }
    tracing::info!(path = %dir.display(), "mounted a bpffs");
    Ok(())
}

fn is_bpffs(dir: &Path) -> anyhow::Result<bool> {
    let path = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", dir.display()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}
