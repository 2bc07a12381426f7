//! `BPF_MAP_LOOKUP_BATCH` over a hash map: the whole table in a few syscalls. aya's iterator
//! costs two syscalls per entry (next key, then lookup), which at tens of thousands of
//! connection-table entries every sweep was the agent's largest share of the L4 CPU figure.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `bpf(2)` command number of `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call (the kernel fills up to this many; a hash bucket holding more
/// than this fails with ENOSPC and is retried with room for twice as many).
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `bpf(cmd, attr, sizeof attr)`: its return value, or the errno as an error.
///
/// # Safety
/// `attr` must be a valid `union bpf_attr` prefix for `cmd`, and every buffer it points at must
/// be as large as the command writes or reads.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: the caller's promise.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<A>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Every (key, value) of the hash map behind `fd`, whose key and value are `K` and `V` as the
/// map declares them (plain `#[repr(C)]` data: the kernel writes their bytes). Entries the
/// kernel changes meanwhile may be seen old or new, as with any iteration of a live map.
pub fn lookup_all<K: Copy, V: Copy>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut chunk = CHUNK;
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    // The position tokens: a hash map's is a bucket index (u32), opaque to us.
    let mut token: u64 = 0;
    let mut next: u64 = 0;
    let mut started = false;
    loop {
        keys.resize_with(chunk, MaybeUninit::uninit);
        values.resize_with(chunk, MaybeUninit::uninit);
        let mut attr = BatchAttr {
            in_batch: if started {
                std::ptr::from_ref(&token) as u64
            } else {
                0
            },
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the batch member of bpf_attr; the key and value buffers hold
        // `count` elements of the map's key and value sizes, and the tokens 8 bytes.
        let err = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        let filled = (attr.count as usize).min(chunk);
        if err.as_ref().and_then(io::Error::raw_os_error) == Some(libc::ENOSPC) && filled == 0 {
            chunk *= 2;
            continue;
        }
        // SAFETY: the kernel wrote `filled` keys and values.
        out.extend(
            keys[..filled]
                .iter()
                .zip(&values[..filled])
                .map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) }),
        );
        match err {
            None => {
                token = next;
                started = true;
            }
            // The end of the table (its last entries come with it).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    use super::*;

    /// A `BPF_MAP_TYPE_LRU_HASH` (u32 → u64), as FLOWS is an LRU hash.
    fn lru_hash(max_entries: u32) -> OwnedFd {
        #[repr(C)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        let mut attr = CreateAttr {
            map_type: 9, // BPF_MAP_TYPE_LRU_HASH
            key_size: 4,
            value_size: 8,
            max_entries,
            map_flags: 0,
        };
        // SAFETY: BPF_MAP_CREATE (0) with the map_create member of bpf_attr.
        let fd = unsafe { bpf(0, &mut attr) }.unwrap_or_else(|e| {
            panic!("BPF_MAP_CREATE failed ({e}): this test needs root (CAP_BPF)")
        });
        // SAFETY: a new fd we own.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn update(fd: &OwnedFd, key: u32, value: u64) {
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let mut attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_ref(&value) as u64,
            flags: 0,
        };
        // SAFETY: BPF_MAP_UPDATE_ELEM (2) with pointers to a key and a value of the map's sizes.
        assert_eq!(unsafe { bpf(2, &mut attr) }.expect("update"), 0);
    }

    #[test]
    fn reads_every_entry_across_several_batches() {
        use std::os::fd::AsFd as _;
        for n in [0u32, 1, 4095, 4096, 4097, 10_000] {
            let fd = lru_hash(20_000);
            for k in 0..n {
                update(&fd, k, u64::from(k) * 3 + 1);
            }
            let mut got: Vec<(u32, u64)> = lookup_all(fd.as_fd()).unwrap();
            got.sort_unstable();
            assert_eq!(got.len(), n as usize, "{n} entries");
            assert!(
                got.iter()
                    .enumerate()
                    .all(|(i, &(k, v))| k == i as u32 && v == u64::from(k) * 3 + 1),
                "{n} entries read back as written"
            );
        }
    }
}
