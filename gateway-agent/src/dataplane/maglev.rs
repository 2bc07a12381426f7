//! Maglev lookup tables (Eisenbud et al., NSDI 2016), weighted as Katran and Cilium weight them:
//! each backend fills table entries along its own permutation of the table, taking turns in
//! proportion to its weight, so every backend owns a share of entries proportional to its weight
//! and adding or removing one backend moves only about 1/N of the entries.

/// One backend as the table builder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevBackend {
    /// The id written into table entries.
    pub id: u32,
    /// A stable name (its address) the permutation is derived from.
    pub name: String,
    /// Relative weight (> 0).
    pub weight: u32,
}

/// 64-bit FNV-1a with a seed, for the two permutation hashes.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final avalanche so nearby names do not get nearby offsets.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Builds a table of `size` entries (`size` must be prime). Empty when no backend has weight.
pub fn build(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let live: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    if live.is_empty() {
        return Vec::new();
    }
    let m = u64::from(size);
    let g = live.iter().fold(0, |acc, b| gcd(acc, b.weight));
    // Turns per round, reduced so the smallest weights take one turn each.
    let turns: Vec<u64> = live.iter().map(|b| u64::from(b.weight / g)).collect();
    let perms: Vec<(u64, u64)> = live
        .iter()
        .map(|b| {
            let offset = fnv1a(0x5eed_0001, b.name.as_bytes()) % m;
            let skip = fnv1a(0x5eed_0002, b.name.as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; live.len()];
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (i, b) in live.iter().enumerate() {
            for _ in 0..turns[i] {
                let (offset, skip) = perms[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c as usize] = b.id;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 4099;

    fn backends(n: u32) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                id: i,
                name: format!("10.0.0.{i}:80"),
                weight: 1,
            })
            .collect()
    }

    fn share(table: &[u32], id: u32) -> f64 {
        table.iter().filter(|&&x| x == id).count() as f64 / table.len() as f64
    }

    #[test]
    fn every_entry_is_filled_and_equal_weights_share_evenly() {
        let table = build(&backends(5), M);
        assert_eq!(table.len(), M as usize);
        for id in 0..5 {
            let s = share(&table, id);
            assert!((0.19..=0.21).contains(&s), "backend {id} owns {s}");
        }
    }

    #[test]
    fn weights_are_honoured() {
        let mut b = backends(2);
        b[0].weight = 80_000;
        b[1].weight = 20_000;
        let table = build(&b, M);
        let s = share(&table, 0);
        assert!((0.79..=0.81).contains(&s), "80/20 split gives {s}");
        b[1].weight = 0;
        assert!(
            build(&b, M).iter().all(|&x| x == 0),
            "weight 0 owns nothing"
        );
        assert!(build(&[], M).is_empty());
    }

    #[test]
    fn adding_one_backend_moves_about_one_nth_of_entries() {
        let before = build(&backends(10), M);
        let after = build(&backends(11), M);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / f64::from(M);
        // The new backend takes ~1/11 of the entries; Maglev keeps the other moves small.
        assert!(
            moved < 0.15,
            "{moved} of entries moved when adding 1 backend to 10"
        );
        let removed = build(&backends(10)[1..], M);
        let moved =
            before.iter().zip(&removed).filter(|(a, b)| a != b).count() as f64 / f64::from(M);
        assert!(
            moved < 0.15,
            "{moved} of entries moved when removing 1 backend of 10"
        );
    }
}
