//! The container's seccomp filter on the processes ExecProcess starts. libcontainer 0.7's
//! tenant builder (what runs an exec) rebuilds the spec's `linux` without its `seccomp`, so
//! an exec would run unfiltered: every `kubectl exec` outside the pod's profile. runc filters
//! an exec with the container's profile, as it filters the container's first process; here
//! the exec'd process installs the filter itself, last thing before execve, through an
//! [`Executor`] that wraps libcontainer's default one.
//!
//! Installing a filter needs no_new_privs or CAP_SYS_ADMIN. An exec with no_new_privs needs
//! nothing more. One without it (Kubernetes' default: allowPrivilegeEscalation) keeps, through
//! libcontainer's capability set-up, CAP_SYS_ADMIN and CAP_SETPCAP as well as its own, when
//! its own lack them ([`prepare`] lends them), and drops them again once the filter is in,
//! from the bounding set first (which needs CAP_SETPCAP), so it runs with exactly the
//! capabilities its spec names. Those drops and the execve pass through the new filter: a
//! profile that forbids them fails the exec, never runs it with more than it asked for.

use libcontainer::oci_spec::runtime::{Capability as SpecCap, LinuxSeccomp, Process, Spec};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

use crate::error::{AgentError, Result};

/// The capabilities a process without no_new_privs needs to install its filter and then drop
/// what it was lent, in the order they are dropped again (CAP_SETPCAP last: dropping from the
/// bounding set needs it).
const LENT: [(SpecCap, caps::Capability); 2] = [
    (SpecCap::SysAdmin, caps::Capability::CAP_SYS_ADMIN),
    (SpecCap::Setpcap, caps::Capability::CAP_SETPCAP),
];

/// The executor of an exec under the container's filter.
#[derive(Clone)]
pub struct FilteredExec {
    seccomp: LinuxSeccomp,
    /// Capabilities lent to the process to install the filter, dropped once it is in.
    lent: Vec<caps::Capability>,
}

/// Readies `process` (an exec of a container whose spec has `seccomp`) to be filtered: lends
/// it the capabilities it needs to install the filter, if it needs them. Refuses profiles
/// that hand syscalls to a user-space listener (SCMP_ACT_NOTIFY): an exec has no one to pass
/// the listener's descriptor to.
pub fn prepare(process: &mut Process, seccomp: &LinuxSeccomp) -> Result<FilteredExec> {
    if libcontainer::seccomp::is_notify(seccomp) {
        return Err(AgentError::Unimplemented(
            "exec in a container whose seccomp profile notifies a listener (SCMP_ACT_NOTIFY)"
                .into(),
        ));
    }
    let mut lent = Vec::new();
    // Without a capabilities field libcontainer leaves the process every capability it has
    // (the agent's: all of them), so there is nothing to lend.
    if process.no_new_privileges() != Some(true) {
        if let Some(mut sets) = process.capabilities().clone() {
            let mut bounding = sets.bounding().clone().unwrap_or_default();
            let mut effective = sets.effective().clone().unwrap_or_default();
            let mut permitted = sets.permitted().clone().unwrap_or_default();
            for (spec_cap, cap) in LENT {
                let held = bounding.contains(&spec_cap)
                    && effective.contains(&spec_cap)
                    && permitted.contains(&spec_cap);
                if !held {
                    bounding.insert(spec_cap);
                    effective.insert(spec_cap);
                    permitted.insert(spec_cap);
                    lent.push(cap);
                }
            }
            sets.set_bounding(Some(bounding))
                .set_effective(Some(effective))
                .set_permitted(Some(permitted));
            process.set_capabilities(Some(sets));
        }
    }
    Ok(FilteredExec {
        seccomp: seccomp.clone(),
        lent,
    })
}

fn failed(what: String) -> ExecutorError {
    ExecutorError::Other(what)
}

impl Executor for FilteredExec {
    fn exec(&self, spec: &Spec) -> std::result::Result<(), ExecutorError> {
        libcontainer::seccomp::initialize_seccomp(&self.seccomp)
            .map_err(|e| failed(format!("installing the container's seccomp filter: {e}")))?;
        for &cap in &self.lent {
            caps::drop(None, caps::CapSet::Bounding, cap).map_err(|e| {
                failed(format!(
                    "dropping the lent {cap} from the bounding set: {e}"
                ))
            })?;
        }
        for &cap in &self.lent {
            for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
                caps::drop(None, set, cap)
                    .map_err(|e| failed(format!("dropping the lent {cap} ({set:?}): {e}")))?;
            }
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::oci_spec::runtime::{
        LinuxCapabilitiesBuilder, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder,
        ProcessBuilder,
    };

    fn profile(action: LinuxSeccompAction) -> LinuxSeccomp {
        LinuxSeccompBuilder::default()
            .default_action(action)
            .build()
            .unwrap()
    }

    fn process(caps: &[SpecCap], no_new_privs: Option<bool>) -> Process {
        let set: std::collections::HashSet<SpecCap> = caps.iter().copied().collect();
        let mut p = ProcessBuilder::default()
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(set.clone())
                    .effective(set.clone())
                    .permitted(set)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        p.set_no_new_privileges(no_new_privs);
        p
    }

    #[test]
    fn an_exec_without_no_new_privs_is_lent_what_it_lacks_and_only_that() {
        let mut p = process(&[SpecCap::Chown, SpecCap::Setpcap], None);
        let f = prepare(&mut p, &profile(LinuxSeccompAction::ScmpActAllow)).unwrap();
        assert_eq!(f.lent, [caps::Capability::CAP_SYS_ADMIN]);
        let sets = p.capabilities().clone().unwrap();
        for set in [sets.bounding(), sets.effective(), sets.permitted()] {
            let set = set.clone().unwrap();
            assert!(set.contains(&SpecCap::SysAdmin) && set.contains(&SpecCap::Chown));
        }
        let inheritable = sets.inheritable().clone().unwrap_or_default();
        assert!(
            !inheritable.contains(&SpecCap::SysAdmin),
            "nothing is lent to the inheritable set"
        );
    }

    #[test]
    fn an_exec_with_no_new_privs_or_every_capability_is_lent_nothing() {
        let mut p = process(&[SpecCap::Chown], Some(true));
        let f = prepare(&mut p, &profile(LinuxSeccompAction::ScmpActAllow)).unwrap();
        assert!(f.lent.is_empty());
        assert_eq!(p, process(&[SpecCap::Chown], Some(true)));
        let mut p = process(&[SpecCap::SysAdmin, SpecCap::Setpcap], Some(false));
        assert!(prepare(&mut p, &profile(LinuxSeccompAction::ScmpActAllow))
            .unwrap()
            .lent
            .is_empty());
    }

    #[test]
    fn a_notifying_profile_is_refused_by_name() {
        let mut p = process(&[], None);
        let mut notifying = profile(LinuxSeccompAction::ScmpActAllow);
        notifying.set_syscalls(Some(vec![LinuxSyscallBuilder::default()
            .names(vec!["mkdir".to_string()])
            .action(LinuxSeccompAction::ScmpActNotify)
            .build()
            .unwrap()]));
        let e = prepare(&mut p, &notifying).err().unwrap();
        assert!(
            matches!(&e, AgentError::Unimplemented(m) if m.contains("SCMP_ACT_NOTIFY")),
            "{e}"
        );
    }
}
