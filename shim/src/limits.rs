//! The pod VM's device rate limits, decided at boot from the config and the first container's
//! annotations: the config's limit for each of disk bytes, disk operations and network bytes
//! each way, made stricter (never looser) by `io.carapace.*-per-sec` annotations, since
//! annotations come from the containerd client, which the shim does not trust with more than
//! the node's operator allows. 0 means no limit.

use carapace_vmm_config::{BucketConfig, RateLimitConfig};
use oci_spec::runtime::Spec;

use crate::config::Config;
use crate::error::Result;
use crate::sizing::annotation;

/// Annotation: the pod's disk bytes per second.
pub const BLK_BYTES: &str = "io.carapace.blk.bytes-per-sec";
/// Annotation: the pod's disk operations per second.
pub const BLK_OPS: &str = "io.carapace.blk.ops-per-sec";
/// Annotation: bytes per second the pod's guest may receive.
pub const NET_RX_BYTES: &str = "io.carapace.net.rx-bytes-per-sec";
/// Annotation: bytes per second the pod's guest may send.
pub const NET_TX_BYTES: &str = "io.carapace.net.tx-bytes-per-sec";

/// A pod VM's limits, in the VMM's configuration types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Each disk's.
    pub blk: Option<RateLimitConfig>,
    /// What each NIC delivers to the guest.
    pub net_rx: Option<RateLimitConfig>,
    /// What each NIC takes from the guest.
    pub net_tx: Option<RateLimitConfig>,
}

/// The stricter of the config's `base` and the annotation `key` (0: no limit).
fn stricter(spec: &Spec, key: &str, base: u64) -> Result<u64> {
    Ok(match annotation::<u64>(spec, key)? {
        Some(0) | None => base,
        Some(a) if base == 0 => a,
        Some(a) => a.min(base),
    })
}

fn limit(bytes: u64, ops: u64) -> Option<RateLimitConfig> {
    let bucket = |n: u64| (n > 0).then(|| BucketConfig::per_second(n));
    let c = RateLimitConfig {
        bandwidth: bucket(bytes),
        ops: bucket(ops),
    };
    (c != RateLimitConfig::default()).then_some(c)
}

/// The limits of the VM booted for `spec`'s pod.
pub fn device_limits(config: &Config, spec: &Spec) -> Result<DeviceLimits> {
    Ok(DeviceLimits {
        blk: limit(
            stricter(spec, BLK_BYTES, config.blk_bytes_per_sec)?,
            stricter(spec, BLK_OPS, config.blk_ops_per_sec)?,
        ),
        net_rx: limit(
            stricter(spec, NET_RX_BYTES, config.net_rx_bytes_per_sec)?,
            0,
        ),
        net_tx: limit(
            stricter(spec, NET_TX_BYTES, config.net_tx_bytes_per_sec)?,
            0,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(annotations: &[(&str, &str)]) -> Spec {
        let mut s = Spec::default();
        s.set_annotations(Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        s
    }

    #[test]
    fn annotations_only_tighten_the_configs_limits() {
        let config = Config {
            net_tx_bytes_per_sec: 1_000_000,
            ..Config::default()
        };
        let l = device_limits(&config, &spec(&[])).unwrap();
        assert_eq!(
            l.net_tx,
            Some(RateLimitConfig {
                bandwidth: Some(BucketConfig::per_second(1_000_000)),
                ops: None
            })
        );
        assert_eq!(
            (l.blk, l.net_rx),
            (None, None),
            "no limit unless one is set"
        );
        // Looser than the config: the config's stays.
        let l = device_limits(&config, &spec(&[(NET_TX_BYTES, "9000000")])).unwrap();
        assert_eq!(
            l.net_tx.unwrap().bandwidth,
            Some(BucketConfig::per_second(1_000_000))
        );
        // Stricter: taken; where the config has none, the annotation sets one.
        let l = device_limits(
            &config,
            &spec(&[(NET_TX_BYTES, "500000"), (BLK_OPS, "100")]),
        )
        .unwrap();
        assert_eq!(
            l.net_tx.unwrap().bandwidth,
            Some(BucketConfig::per_second(500_000))
        );
        assert_eq!(
            l.blk.unwrap().ops,
            Some(BucketConfig {
                size: 10,
                refill_time_ms: 100
            })
        );
        let e = device_limits(&config, &spec(&[(BLK_BYTES, "lots")])).unwrap_err();
        assert!(e.to_string().contains(BLK_BYTES), "{e}");
    }
}
