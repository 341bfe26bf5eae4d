//! Reading a container's cgroup: statistics (cgroup v2 files read directly in the guest; v1 or
//! hybrid hosts through libcgroups), OOM-kill counters, and the pod's network counters.

use std::path::{Path, PathBuf};

use carapace_protocol::agent::StatsContainerResponse;
use carapace_protocol::types::{CpuStats, IoDeviceStats, MemoryStats, NetworkStats, PidsStats};
use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup,
};

use crate::error::{AgentError, Result};

/// Where the cgroup filesystems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A libcgroups manager for the cgroup at `path` (absolute cgroup path).
pub fn manager(path: &str, container: &str) -> Result<AnyCgroupManager> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: PathBuf::from(path),
        systemd_cgroup: false,
        container_name: container.to_string(),
    })
    .map_err(|e| AgentError::Internal(format!("opening cgroup {path}: {e}")))
}

fn is_unified() -> bool {
    matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified))
}

/// The file of the cgroup at `path` that counts its OOM kills (`oom_kill`): cgroup v2's
/// `memory.events` (which inotify reports changes of) or v1's `memory.oom_control`.
pub fn oom_events_file(path: &str) -> PathBuf {
    let rel = path.trim_start_matches('/');
    if is_unified() {
        Path::new(CGROUP_ROOT).join(rel).join("memory.events")
    } else {
        Path::new(CGROUP_ROOT)
            .join("memory")
            .join(rel)
            .join("memory.oom_control")
    }
}

/// Whether changes to [`oom_events_file`] are notified (cgroup v2 only).
pub fn oom_events_notify() -> bool {
    is_unified()
}

/// How many times the kernel's OOM killer killed a process of the cgroup at `path`.
pub fn oom_kills(path: &str) -> u64 {
    keyed(
        &std::fs::read_to_string(oom_events_file(path)).unwrap_or_default(),
        "oom_kill",
    )
    .unwrap_or(0)
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

/// The pids (in the reader's pid namespace) of every process in the cgroup at `path` and its
/// descendants, ascending, as libcgroups reads them from `cgroup.procs`.
pub fn pids(path: &str, container: &str) -> Result<Vec<u32>> {
    let all = manager(path, container)?.get_all_pids().map_err(|e| {
        AgentError::Internal(format!("listing the processes of cgroup {path}: {e}"))
    })?;
    let mut pids: Vec<u32> = all
        .into_iter()
        .filter_map(|p| u32::try_from(p.as_raw()).ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Statistics of the cgroup at `path`, plus the network counters of the pod.
pub fn stats(path: &str, container: &str) -> Result<StatsContainerResponse> {
    let mut r = if is_unified() {
        let dir = Path::new(CGROUP_ROOT).join(path.trim_start_matches('/'));
        if !dir.is_dir() {
            return Err(AgentError::Internal(format!(
                "the cgroup {} does not exist",
                dir.display()
            )));
        }
        stats_v2(&dir)
    } else {
        stats_libcgroups(path, container)?
    };
    r.network = network_stats(&std::fs::read_to_string("/proc/net/dev").unwrap_or_default());
    Ok(r)
}

/// Statistics from a cgroup v2 directory's own files. libcgroups' v2 stats fail as a whole
/// when one optional file is missing (cpu.pressure without CONFIG_PSI), so the agent reads the
/// files itself; a controller that is not enabled reads as zeros.
pub fn stats_v2(dir: &Path) -> StatsContainerResponse {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let num = |f: &str| read(f).trim().parse::<u64>().unwrap_or(0);
    let mut r = StatsContainerResponse::new();

    let cpu_stat = read("cpu.stat");
    let k = |key: &str| keyed(&cpu_stat, key).unwrap_or(0);
    let mut cpu = CpuStats::new();
    (cpu.usage_usec, cpu.user_usec, cpu.system_usec) =
        (k("usage_usec"), k("user_usec"), k("system_usec"));
    (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec) =
        (k("nr_periods"), k("nr_throttled"), k("throttled_usec"));
    r.cpu = Some(cpu).into();

    let mem_stat = read("memory.stat");
    let events = read("memory.events");
    let mut mem = MemoryStats::new();
    mem.usage_bytes = num("memory.current");
    mem.limit_bytes = num("memory.max"); // "max" (no limit) parses as 0
    mem.max_usage_bytes = num("memory.peak");
    mem.anon_bytes = keyed(&mem_stat, "anon").unwrap_or(0);
    mem.file_bytes = keyed(&mem_stat, "file").unwrap_or(0);
    mem.oom_events = keyed(&events, "oom").unwrap_or(0);
    mem.oom_kill_events = keyed(&events, "oom_kill").unwrap_or(0);
    r.memory = Some(mem).into();

    let mut pids = PidsStats::new();
    pids.current = num("pids.current");
    pids.limit = num("pids.max");
    r.pids = Some(pids).into();

    r.io = io_stat(&read("io.stat"));
    r
}

/// Parses cgroup v2 io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...` per device.
fn io_stat(text: &str) -> Vec<IoDeviceStats> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let (major, minor) = it.next()?.split_once(':')?;
            let mut d = IoDeviceStats::new();
            d.major = major.parse().ok()?;
            d.minor = minor.parse().ok()?;
            for kv in it {
                let Some((key, value)) = kv.split_once('=') else {
                    continue;
                };
                let value = value.parse().unwrap_or(0);
                match key {
                    "rbytes" => d.read_bytes = value,
                    "wbytes" => d.write_bytes = value,
                    "rios" => d.read_ios = value,
                    "wios" => d.write_ios = value,
                    _ => {}
                }
            }
            Some(d)
        })
        .collect()
}

/// Statistics through libcgroups (cgroup v1 or hybrid hosts, for host tests).
fn stats_libcgroups(path: &str, container: &str) -> Result<StatsContainerResponse> {
    let s = manager(path, container)?
        .stats()
        .map_err(|e| AgentError::Internal(format!("reading cgroup statistics: {e}")))?;
    // cgroup v2 counts CPU time in microseconds, v1's cpuacct in nanoseconds.
    let unified = is_unified();
    let usec = |v: u64| if unified { v } else { v / 1000 };
    let mut r = StatsContainerResponse::new();
    let mut cpu = CpuStats::new();
    cpu.usage_usec = usec(s.cpu.usage.usage_total);
    cpu.user_usec = usec(s.cpu.usage.usage_user);
    cpu.system_usec = usec(s.cpu.usage.usage_kernel);
    cpu.nr_periods = s.cpu.throttling.periods;
    cpu.nr_throttled = s.cpu.throttling.throttled_periods;
    cpu.throttled_usec = usec(s.cpu.throttling.throttled_time);
    r.cpu = Some(cpu).into();

    let mut mem = MemoryStats::new();
    mem.usage_bytes = s.memory.memory.usage;
    mem.limit_bytes = if s.memory.memory.limit >= i64::MAX as u64 / 2 {
        0
    } else {
        s.memory.memory.limit
    };
    mem.max_usage_bytes = s.memory.memory.max_usage;
    mem.anon_bytes = s
        .memory
        .stats
        .get("anon")
        .or(s.memory.stats.get("rss"))
        .copied()
        .unwrap_or(0);
    mem.file_bytes = s
        .memory
        .stats
        .get("file")
        .copied()
        .unwrap_or(s.memory.cache);
    mem.oom_events = s.memory.memory.fail_count;
    mem.oom_kill_events = oom_kills(path);
    r.memory = Some(mem).into();

    let mut pids = PidsStats::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    r.pids = Some(pids).into();

    let mut io: Vec<IoDeviceStats> = Vec::new();
    let mut entry = |major: u64, minor: u64| -> usize {
        let (major, minor) = (major as u32, minor as u32);
        if let Some(i) = io.iter().position(|d| d.major == major && d.minor == minor) {
            return i;
        }
        let mut d = IoDeviceStats::new();
        d.major = major;
        d.minor = minor;
        io.push(d);
        io.len() - 1
    };
    let mut updates = Vec::new();
    for (bytes, list) in [(true, &s.blkio.service_bytes), (false, &s.blkio.serviced)] {
        for d in list {
            updates.push((entry(d.major, d.minor), bytes, d.op_type.clone(), d.value));
        }
    }
    for (i, bytes, op, value) in updates {
        let d = &mut io[i];
        match (bytes, op.as_deref().map(str::to_ascii_lowercase).as_deref()) {
            (true, Some("read")) => d.read_bytes = value,
            (true, Some("write")) => d.write_bytes = value,
            (false, Some("read")) => d.read_ios = value,
            (false, Some("write")) => d.write_ios = value,
            _ => {}
        }
    }
    r.io = io;
    Ok(r)
}

/// Parses /proc/net/dev (the pod's network namespace is the agent's).
pub fn network_stats(text: &str) -> Vec<NetworkStats> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() < 12 {
                return None;
            }
            let mut n = NetworkStats::new();
            n.name = name.trim().to_string();
            (n.rx_bytes, n.rx_packets, n.rx_errors, n.rx_dropped) = (v[0], v[1], v[2], v[3]);
            (n.tx_bytes, n.tx_packets, n.tx_errors, n.tx_dropped) = (v[8], v[9], v[10], v[11]);
            Some(n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n  eth0: 5 6 7 8 0 0 0 0 9 10 11 12 0 0 0 0\n";
        let s = network_stats(text);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[1].name.as_str(), s[1].rx_bytes, s[1].tx_dropped),
            ("eth0", 5, 12)
        );
    }

    #[test]
    fn reads_a_cgroup_v2_directory() {
        let dir = std::env::temp_dir().join(format!("carapace-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (f, text) in [
            ("cpu.stat", "usage_usec 500\nuser_usec 300\nsystem_usec 200\nnr_periods 4\nnr_throttled 1\nthrottled_usec 9\n"),
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "anon 1024\nfile 2048\n"),
            ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
            ("pids.current", "3\n"),
            ("pids.max", "16\n"),
            ("io.stat", "254:0 rbytes=8192 wbytes=4096 rios=2 wios=1 dbytes=0 dios=0\n"),
        ] {
            std::fs::write(dir.join(f), text).unwrap();
        }
        let s = stats_v2(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let (cpu, mem, pids) = (s.cpu.unwrap(), s.memory.unwrap(), s.pids.unwrap());
        assert_eq!(
            (cpu.usage_usec, cpu.user_usec, cpu.nr_throttled),
            (500, 300, 1)
        );
        assert_eq!(
            (mem.usage_bytes, mem.limit_bytes, mem.max_usage_bytes),
            (4096, 0, 0)
        );
        assert_eq!(
            (mem.anon_bytes, mem.file_bytes, mem.oom_kill_events),
            (1024, 2048, 1)
        );
        assert_eq!((pids.current, pids.limit), (3, 16));
        assert_eq!(s.io.len(), 1);
        assert_eq!(
            (
                s.io[0].major,
                s.io[0].minor,
                s.io[0].read_bytes,
                s.io[0].write_ios
            ),
            (254, 0, 8192, 1)
        );
    }

    #[test]
    fn reads_keyed_files() {
        assert_eq!(keyed("oom 1\noom_kill 3\n", "oom_kill"), Some(3));
        assert_eq!(keyed("oom 1\n", "oom_kill"), None);
    }
}
