//! Conversions between containerd's shim types and the agent's protocol: stdio paths,
//! statistics (agent stats to containerd's cgroup v2 `Metrics`), exit statuses and times.

use std::time::SystemTime;

use carapace_protocol::agent::{StatsContainerResponse, WaitProcessResponse};
use containerd_shim_protos::api::{CreateTaskRequest, ExecProcessRequest};
use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, NetworkStat, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};

use crate::error::{Result, ShimError};
use crate::stdio::StdioPaths;

/// The type URL containerd decodes cgroup v2 metrics with.
pub const METRICS_V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

impl From<&CreateTaskRequest> for StdioPaths {
    fn from(r: &CreateTaskRequest) -> Self {
        Self {
            stdin: r.stdin.clone(),
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            terminal: r.terminal,
        }
    }
}

impl From<&ExecProcessRequest> for StdioPaths {
    fn from(r: &ExecProcessRequest) -> Self {
        Self {
            stdin: r.stdin.clone(),
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            terminal: r.terminal,
        }
    }
}

/// A process's exit as containerd reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// The exit code, or 128 + the signal number.
    pub status: u32,
    /// When it happened: the agent's reaping time, or when the shim saw it if the agent
    /// did not say.
    pub at: Timestamp,
}

impl Exit {
    /// An exit observed now.
    pub fn now(status: u32) -> Self {
        Self {
            status,
            at: timestamp(SystemTime::now()),
        }
    }
}

impl From<&WaitProcessResponse> for Exit {
    fn from(r: &WaitProcessResponse) -> Self {
        let status = if r.signal != 0 {
            128 + r.signal
        } else {
            r.exit_status as u32
        };
        // The agent's time of reaping (guest kvm-clock, within the host's clock); an agent
        // too old to send it, or an unset time, falls back to the shim's.
        match r.exited_at.as_ref() {
            Some(at) if at.seconds > 0 => Self {
                status,
                at: at.clone(),
            },
            _ => Exit::now(status),
        }
    }
}

/// A protobuf timestamp of `t`.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// The OCI JSON carried in an `Any` (containerd encodes runtime-spec types as JSON).
pub fn any_json(any: &Any, what: &str) -> Result<Vec<u8>> {
    if any.value.is_empty() {
        return Err(ShimError::InvalidArgument(format!("{what} is empty")));
    }
    serde_json::from_slice::<serde_json::Value>(&any.value).map_err(|e| {
        ShimError::InvalidArgument(format!("{what} ({}) is not JSON: {e}", any.type_url))
    })?;
    Ok(any.value.clone())
}

/// The agent's statistics as containerd's cgroup v2 metrics.
pub fn metrics(s: &StatsContainerResponse) -> Metrics {
    {
        let mut m = Metrics::new();
        if let Some(p) = s.pids.as_ref() {
            m.pids = MessageField::some(PidsStat {
                current: p.current,
                limit: p.limit,
                ..Default::default()
            });
        }
        if let Some(c) = s.cpu.as_ref() {
            m.cpu = MessageField::some(CPUStat {
                usage_usec: c.usage_usec,
                user_usec: c.user_usec,
                system_usec: c.system_usec,
                nr_periods: c.nr_periods,
                nr_throttled: c.nr_throttled,
                throttled_usec: c.throttled_usec,
                ..Default::default()
            });
        }
        if let Some(mem) = s.memory.as_ref() {
            m.memory = MessageField::some(MemoryStat {
                usage: mem.usage_bytes,
                usage_limit: mem.limit_bytes,
                max_usage: mem.max_usage_bytes,
                anon: mem.anon_bytes,
                file: mem.file_bytes,
                ..Default::default()
            });
            m.memory_events = MessageField::some(MemoryEvents {
                oom: mem.oom_events,
                oom_kill: mem.oom_kill_events,
                ..Default::default()
            });
        }
        if !s.io.is_empty() {
            m.io = MessageField::some(IOStat {
                usage: s
                    .io
                    .iter()
                    .map(|d| IOEntry {
                        major: d.major.into(),
                        minor: d.minor.into(),
                        rbytes: d.read_bytes,
                        wbytes: d.write_bytes,
                        rios: d.read_ios,
                        wios: d.write_ios,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        }
        m.network = s
            .network
            .iter()
            .map(|n| NetworkStat {
                name: n.name.clone(),
                rx_bytes: n.rx_bytes,
                rx_packets: n.rx_packets,
                rx_errors: n.rx_errors,
                rx_dropped: n.rx_dropped,
                tx_bytes: n.tx_bytes,
                tx_packets: n.tx_packets,
                tx_errors: n.tx_errors,
                tx_dropped: n.tx_dropped,
                ..Default::default()
            })
            .collect();
        m
    }
}

/// Metrics packed as containerd's `StatsResponse` expects.
pub fn metrics_any(s: &StatsContainerResponse) -> Result<Any> {
    let m = metrics(s);
    let mut any = Any::new();
    any.type_url = METRICS_V2_TYPE.to_string();
    any.value = m
        .write_to_bytes()
        .map_err(|e| ShimError::Internal(format!("encoding metrics: {e}")))?;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use carapace_protocol::types::{MemoryStats, PidsStats};

    use super::*;

    #[test]
    fn signals_become_128_plus() {
        let r = WaitProcessResponse {
            exit_status: 137,
            signal: 9,
            ..Default::default()
        };
        assert_eq!(Exit::from(&r).status, 137);
        let r = WaitProcessResponse {
            exit_status: 3,
            ..Default::default()
        };
        assert_eq!(Exit::from(&r).status, 3);
    }

    #[test]
    fn the_agents_exit_time_is_kept() {
        let mut at = Timestamp::new();
        at.seconds = 1_700_000_000;
        at.nanos = 5;
        let r = WaitProcessResponse {
            exited_at: MessageField::some(at.clone()),
            ..Default::default()
        };
        assert_eq!(Exit::from(&r).at, at);
        // Absent (an older agent): the shim's own time.
        let before = timestamp(SystemTime::now());
        let shim = Exit::from(&WaitProcessResponse::default()).at;
        assert!(shim.seconds >= before.seconds, "{shim:?} vs {before:?}");
    }

    #[test]
    fn stats_become_v2_metrics() {
        let mut s = StatsContainerResponse::new();
        s.pids = MessageField::some(PidsStats {
            current: 2,
            limit: 10,
            ..Default::default()
        });
        s.memory = MessageField::some(MemoryStats {
            usage_bytes: 4096,
            limit_bytes: 1 << 20,
            oom_kill_events: 1,
            ..Default::default()
        });
        let any = metrics_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_V2_TYPE);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.pids.current, 2);
        assert_eq!(m.memory.usage_limit, 1 << 20);
        assert_eq!(m.memory_events.oom_kill, 1);
    }

    #[test]
    fn json_anys_are_checked() {
        let mut a = Any::new();
        a.value = b"{\"args\":[\"sh\"]}".to_vec();
        assert!(any_json(&a, "the exec spec").is_ok());
        a.value = b"\x0a\x01x".to_vec();
        assert!(any_json(&a, "the exec spec").is_err());
    }
}
