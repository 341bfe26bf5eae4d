//! The size of a pod's VM, decided once at boot from the first container's spec: carapace's
//! own annotations if the pod names a size, else the config's base size plus what the pod's
//! workload asks for (the CRI's pod-level resource annotations, or the container's own
//! limits), as Kata sizes its VMs; capped by the config's maxima.
//!
//! The VM cannot grow after boot (no CPU or memory hotplug yet): later containers of a pod
//! run within the size their sandbox gave it.

use oci_spec::runtime::Spec;

use crate::config::Config;
use crate::error::{Result, ShimError};

/// Annotation naming the pod VM's vCPU count exactly.
pub const VCPUS: &str = "io.carapace.vcpus";
/// Annotation naming the pod VM's memory in MiB exactly.
pub const MEMORY_MIB: &str = "io.carapace.memory_mib";
/// The pod's memory limit in bytes, summed over its containers (containerd 1.7+ CRI).
pub const CRI_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// The pod's CPU quota in microseconds per period (containerd 1.7+ CRI).
pub const CRI_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// The pod's CPU period in microseconds (containerd 1.7+ CRI).
pub const CRI_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

const MIB: u64 = 1 << 20;
/// The smallest VM the guest kernel and agent boot in.
pub const MIN_MEMORY_MIB: u64 = 64;

/// A pod VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u64,
}

pub(crate) fn annotation<T: std::str::FromStr>(spec: &Spec, key: &str) -> Result<Option<T>> {
    let Some(value) = spec.annotations().as_ref().and_then(|a| a.get(key)) else {
        return Ok(None);
    };
    value.trim().parse().map(Some).map_err(|_| {
        ShimError::InvalidArgument(format!("annotation {key}={value:?} is not a number"))
    })
}

/// Whole CPUs needed for `quota` microseconds per `period` (none for an unlimited quota).
fn cpus_for(quota: i64, period: u64) -> u64 {
    if quota <= 0 || period == 0 {
        return 0;
    }
    (quota as u64).div_ceil(period)
}

/// The workload's memory (bytes) and CPUs: the CRI pod totals, else the container's limits.
fn workload(spec: &Spec) -> Result<(u64, u64)> {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let memory = match annotation::<i64>(spec, CRI_MEMORY)? {
        Some(m) if m > 0 => m as u64,
        _ => resources
            .as_ref()
            .and_then(|r| r.memory().as_ref()?.limit())
            .filter(|l| *l > 0)
            .map_or(0, |l| l as u64),
    };
    let cpus = match (
        annotation::<i64>(spec, CRI_CPU_QUOTA)?,
        annotation::<u64>(spec, CRI_CPU_PERIOD)?,
    ) {
        (Some(q), Some(p)) if q > 0 && p > 0 => cpus_for(q, p),
        _ => resources
            .as_ref()
            .and_then(|r| r.cpu().clone())
            .map_or(0, |c| {
                cpus_for(c.quota().unwrap_or(0), c.period().unwrap_or(100_000))
            }),
    };
    Ok((memory, cpus))
}

/// The size of the VM for a pod whose first container has `spec`.
pub fn vm_size(config: &Config, spec: &Spec) -> Result<VmSize> {
    let max_vcpus = config.vcpu_limit();
    let vcpus = match annotation::<u64>(spec, VCPUS)? {
        Some(n) if n == 0 || n > u64::from(max_vcpus) => {
            return Err(ShimError::InvalidArgument(format!(
                "annotation {VCPUS}={n}: between 1 and max_vcpus ({max_vcpus})"
            )))
        }
        Some(n) => n as u8,
        None => {
            let (_, cpus) = workload(spec)?;
            let want = u64::from(config.vcpus) + cpus;
            if want > u64::from(max_vcpus) {
                log::warn!("the pod asks for {want} vCPUs; capped at max_vcpus {max_vcpus}");
            }
            want.min(u64::from(max_vcpus)) as u8
        }
    };
    let memory_mib = match annotation::<u64>(spec, MEMORY_MIB)? {
        Some(m) if !(MIN_MEMORY_MIB..=config.max_memory_mib).contains(&m) => {
            return Err(ShimError::InvalidArgument(format!(
                "annotation {MEMORY_MIB}={m}: between {MIN_MEMORY_MIB} and max_memory_mib ({})",
                config.max_memory_mib
            )))
        }
        Some(m) => m,
        None => {
            let (bytes, _) = workload(spec)?;
            let want = config.memory_mib + bytes.div_ceil(MIB);
            if want > config.max_memory_mib {
                log::warn!(
                    "the pod asks for {want} MiB; capped at max_memory_mib {}",
                    config.max_memory_mib
                );
            }
            want.min(config.max_memory_mib)
        }
    };
    Ok(VmSize { vcpus, memory_mib })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(&format!(r#"{{"ociVersion":"1.0.2",{json}}}"#)).unwrap()
    }

    fn config() -> Config {
        Config {
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 4,
            max_memory_mib: 1024,
            ..Config::default()
        }
    }

    #[test]
    fn no_limits_no_annotations_is_the_base_size() {
        let s = vm_size(&config(), &spec(r#""annotations":{}"#)).unwrap();
        assert_eq!(
            s,
            VmSize {
                vcpus: 1,
                memory_mib: 256
            }
        );
    }

    #[test]
    fn container_limits_add_to_the_base_size() {
        let s = spec(
            r#""linux":{"resources":{"memory":{"limit":33554432},"cpu":{"quota":150000,"period":100000}}}"#,
        );
        let s = vm_size(&config(), &s).unwrap();
        assert_eq!(
            s,
            VmSize {
                vcpus: 3,
                memory_mib: 288
            }
        );
    }

    #[test]
    fn cri_pod_totals_win_over_the_container_limits() {
        let s = spec(
            r#""annotations":{"io.kubernetes.cri.sandbox-memory":"134217728","io.kubernetes.cri.sandbox-cpu-quota":"50000","io.kubernetes.cri.sandbox-cpu-period":"100000"},
               "linux":{"resources":{"memory":{"limit":33554432}}}"#,
        );
        assert_eq!(
            vm_size(&config(), &s).unwrap(),
            VmSize {
                vcpus: 2,
                memory_mib: 384
            }
        );
    }

    #[test]
    fn carapace_annotations_name_the_size() {
        let s = spec(
            r#""annotations":{"io.carapace.vcpus":"2","io.carapace.memory_mib":"512"},"linux":{"resources":{"memory":{"limit":33554432}}}"#,
        );
        assert_eq!(
            vm_size(&config(), &s).unwrap(),
            VmSize {
                vcpus: 2,
                memory_mib: 512
            }
        );
    }

    #[test]
    fn workload_beyond_the_maxima_is_capped() {
        let s = spec(
            r#""linux":{"resources":{"memory":{"limit":10737418240},"cpu":{"quota":1000000,"period":100000}}}"#,
        );
        assert_eq!(
            vm_size(&config(), &s).unwrap(),
            VmSize {
                vcpus: 4,
                memory_mib: 1024
            }
        );
    }

    #[test]
    fn bad_annotations_are_refused_by_name() {
        for (ann, key) in [
            (r#""io.carapace.vcpus":"0""#, VCPUS),
            (r#""io.carapace.vcpus":"9""#, VCPUS),
            (r#""io.carapace.vcpus":"two""#, VCPUS),
            (r#""io.carapace.memory_mib":"32""#, MEMORY_MIB),
            (r#""io.carapace.memory_mib":"4096""#, MEMORY_MIB),
            (r#""io.kubernetes.cri.sandbox-memory":"lots""#, CRI_MEMORY),
        ] {
            let e = vm_size(&config(), &spec(&format!(r#""annotations":{{{ann}}}"#))).unwrap_err();
            assert!(matches!(e, ShimError::InvalidArgument(_)), "{ann}: {e}");
            assert!(e.to_string().contains(key), "{ann}: {e}");
        }
    }
}
