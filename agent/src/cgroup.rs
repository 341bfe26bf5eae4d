//! Reading a container's cgroup: statistics (through libcgroups, v2 in the guest and v1 or
//! hybrid on a development host), OOM-kill counters, and the pod's network counters.

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

/// How many times the kernel's OOM killer killed a process of the cgroup at `path`.
pub fn oom_kills(path: &str) -> u64 {
    let rel = path.trim_start_matches('/');
    let file = if is_unified() {
        Path::new(CGROUP_ROOT).join(rel).join("memory.events")
    } else {
        Path::new(CGROUP_ROOT)
            .join("memory")
            .join(rel)
            .join("memory.oom_control")
    };
    keyed(
        &std::fs::read_to_string(file).unwrap_or_default(),
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

/// Statistics of the cgroup at `path`, plus the network counters of the pod.
pub fn stats(path: &str, container: &str) -> Result<StatsContainerResponse> {
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
    r.network = network_stats(&std::fs::read_to_string("/proc/net/dev").unwrap_or_default());
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
    fn reads_keyed_files() {
        assert_eq!(keyed("oom 1\noom_kill 3\n", "oom_kill"), Some(3));
        assert_eq!(keyed("oom 1\n", "oom_kill"), None);
    }
}
