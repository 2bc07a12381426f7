//! What the benchmarks read from the system: CPU affinity, /proc/PID/stat CPU time,
//! /proc/PID/status memory, /proc/stat whole-machine busy time; and stopping what they started.

use std::process::Child;

/// Pins the calling thread to `cpu` (best effort: a machine with fewer CPUs keeps the default).
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it; pid 0 is the
    // calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Clock ticks per second of /proc CPU times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of `pid` in seconds (0 when it is gone).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let (user, system) = process_times(pid);
    user + system
}

/// (utime, stime) of `pid` in seconds ((0, 0) when it is gone).
fn process_times(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (
        ticks(11) as f64 / clock_ticks(),
        ticks(12) as f64 / clock_ticks(),
    )
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and its direct children (nginx's master and workers).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && parent_of(p) == Some(pid)
            {
                pids.push(p);
            }
        }
    }
    pids
}

/// Sum of utime + stime over `pids`, seconds.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().map(|p| process_cpu_seconds(*p)).sum()
}

/// Sums of (utime, stime) over `pids`, seconds.
fn user_system_seconds(pids: &[u32]) -> (f64, f64) {
    pids.iter()
        .map(|p| process_times(*p))
        .fold((0.0, 0.0), |(u, s), (pu, ps)| (u + pu, s + ps))
}

/// A `/proc/PID/status` field in kB (VmRSS, VmHWM), summed over `pids`, as MiB.
pub fn memory_mib(pids: &[u32], field: &str) -> Option<f64> {
    let mut kb = 0u64;
    let mut any = false;
    for pid in pids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        if let Some(v) = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        {
            kb += v;
            any = true;
        }
    }
    any.then(|| kb as f64 / 1024.0)
}

/// The host's steal time (/proc/stat's eighth field: time a vCPU was runnable but the
/// hypervisor ran something else), seconds over all CPUs, and the CPU count.
fn machine_steal() -> (f64, usize) {
    let (fields, cpus) = stat_cpu_fields();
    (
        fields.get(7).copied().unwrap_or(0) as f64 / clock_ticks(),
        cpus,
    )
}

/// The aggregate `cpu` line of /proc/stat, in ticks, and the number of per-CPU lines.
fn stat_cpu_fields() -> (Vec<u64>, usize) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut lines = stat.lines();
    let fields: Vec<u64> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let cpus = lines.take_while(|l| l.starts_with("cpu")).count().max(1);
    (fields, cpus)
}

/// The share of the machine's time the hypervisor stole over a span: a window with much of it
/// measured the neighbours as much as the path (packet rates fall, CPU figures come out short).
#[derive(Debug, Clone, Copy)]
pub struct StealMeter {
    steal: f64,
    started: std::time::Instant,
}

impl StealMeter {
    /// Starts measuring.
    pub fn start() -> Self {
        StealMeter {
            steal: machine_steal().0,
            started: std::time::Instant::now(),
        }
    }

    /// Stolen time since the start as a share (0–1) of wall time × CPUs.
    pub fn share(&self) -> f64 {
        let (steal, cpus) = machine_steal();
        let wall = self.started.elapsed().as_secs_f64() * cpus as f64;
        if wall <= 0.0 {
            return 0.0;
        }
        ((steal - self.steal) / wall).clamp(0.0, 1.0)
    }
}

/// Whole-machine CPU seconds not busy so far (idle, iowait and steal, summed over CPUs) and the
/// number of CPUs, from /proc/stat. Busy time is what is left of wall time × CPUs: the busy
/// fields themselves (user, system, softirq, ...) are sampled at the scheduler tick
/// (TICK_CPU_ACCOUNTING), and NO_HZ_IDLE stops the tick on a CPU that idles, so a short burst of
/// softirq work between idle periods (a paced sender's packets through a forwarding path) is
/// mostly never sampled and reads near zero; idle time under NO_HZ is measured exactly by the
/// tick-sched idle tracker. Steal is time the hypervisor gave our vCPUs' host CPUs to someone
/// else: counted as busy, a busy host would make every path look slower.
fn machine_not_busy() -> (f64, usize) {
    let (fields, cpus) = stat_cpu_fields();
    let not_busy: u64 = [3, 4, 7].iter().filter_map(|&i| fields.get(i)).sum();
    (not_busy as f64 / clock_ticks(), cpus)
}

/// utime + stime of the kernel's worker threads (`kworker/*`, which run sockmap's
/// `sk_psock_backlog`) and softirq threads (`ksoftirqd/*`), seconds. With tick-based CPU
/// accounting (no IRQ_TIME_ACCOUNTING) softirq work is charged to whichever task it interrupted,
/// so a path's loopback softirqs are already in its own processes' times and these threads hold
/// the rest; other tenants' softirqs stay out, which /proc/stat's softirq field cannot do.
pub fn kernel_thread_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("kworker/") || c.starts_with("ksoftirqd/"))
        })
        .map(process_cpu_seconds)
        .sum()
}

/// CPU time over a window: of some processes, and of the whole machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    user: f64,
    system: f64,
    not_busy: f64,
    started: std::time::Instant,
}

/// What a [`CpuWindow`] measured, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct CpuSpent {
    /// utime + stime of the processes.
    pub process: f64,
    /// utime alone: the processes' userspace share of `process`.
    pub user: f64,
    /// Whole-machine busy time.
    pub machine: f64,
}

impl CpuWindow {
    /// Starts a window over `pids` (may be empty).
    pub fn start(pids: &[u32]) -> Self {
        let (user, system) = user_system_seconds(pids);
        CpuWindow {
            user,
            system,
            not_busy: machine_not_busy().0,
            started: std::time::Instant::now(),
        }
    }

    /// What was spent since the start.
    pub fn end(&self, pids: &[u32]) -> CpuSpent {
        let (user, system) = user_system_seconds(pids);
        let user = user - self.user;
        let (not_busy, cpus) = machine_not_busy();
        let wall = self.started.elapsed().as_secs_f64() * cpus as f64;
        CpuSpent {
            process: user + system - self.system,
            user,
            machine: (wall - (not_busy - self.not_busy)).max(0.0),
        }
    }
}

/// Stops a child we started: SIGTERM, a grace period, then SIGKILL; reaps it.
pub fn stop(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling a child we spawned and have not reaped (its pid cannot be reused).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
