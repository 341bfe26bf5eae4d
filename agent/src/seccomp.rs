//! The container's seccomp filter on the processes ExecProcess starts. libcontainer 0.7's
//! tenant builder (what runs an exec) rebuilds the spec's `linux` without its `seccomp`, so
//! an exec would run unfiltered: every `kubectl exec` outside the pod's profile. runc filters
//! an exec with the container's profile, as it filters the container's first process; here
//! the exec'd process installs the filter itself, last thing before execve, through an
//! [`Executor`] that wraps libcontainer's default one.
//!
//! Installing a filter needs no_new_privs or CAP_SYS_ADMIN. An exec with no_new_privs needs
//! nothing more. One without it (Kubernetes' default: allowPrivilegeEscalation) has
//! CAP_SYS_ADMIN and CAP_SETPCAP added, by [`prepare`], to those of its capability sets that
//! lack them, so it holds them through libcontainer's capability set-up, and drops them
//! again: from the bounding and inheritable sets before the filter is in (read back, so a
//! filter that fakes the drops' success cannot keep them past execve), from the effective
//! and permitted sets after. It runs with exactly the capabilities its spec names; a
//! profile that forbids a drop fails the exec, never runs it with more.

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
    /// What was lent to the process to install the filter, dropped again.
    lent: Lent,
}

/// The capabilities lent, by the set they were added to (a set the spec leaves unset, which
/// libcontainer leaves as the agent's, is lent nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Lent {
    bounding: Vec<caps::Capability>,
    effective: Vec<caps::Capability>,
    permitted: Vec<caps::Capability>,
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
    let mut lent = Lent::default();
    // Without a capabilities field libcontainer leaves the process every capability it has
    // (the agent's: all of them), so there is nothing to lend.
    if process.no_new_privileges() != Some(true) {
        if let Some(mut sets) = process.capabilities().clone() {
            let mut bounding = sets.bounding().clone();
            let mut effective = sets.effective().clone();
            let mut permitted = sets.permitted().clone();
            for (spec_cap, cap) in LENT {
                for (set, into) in [
                    (&mut bounding, &mut lent.bounding),
                    (&mut effective, &mut lent.effective),
                    (&mut permitted, &mut lent.permitted),
                ] {
                    if let Some(set) = set.as_mut() {
                        if set.insert(spec_cap) {
                            into.push(cap);
                        }
                    }
                }
            }
            sets.set_bounding(bounding)
                .set_effective(effective)
                .set_permitted(permitted);
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

fn drop_from(
    set: caps::CapSet,
    lent: &[caps::Capability],
) -> std::result::Result<(), ExecutorError> {
    for &cap in lent {
        caps::drop(None, set, cap)
            .map_err(|e| failed(format!("dropping the lent {cap} from the {set:?} set: {e}")))?;
    }
    Ok(())
}

impl Executor for FilteredExec {
    /// In this order, so that a filter that answers the drops falsely cannot keep what was
    /// lent: the bounding set, and the inheritable set, before the filter (dropping from the
    /// bounding set needs CAP_SETPCAP, and is read back); the filter (CAP_SYS_ADMIN
    /// effective); the effective and permitted sets last, which execve recomputes from the
    /// bounding and inheritable sets anyway.
    fn exec(&self, spec: &Spec) -> std::result::Result<(), ExecutorError> {
        drop_from(caps::CapSet::Bounding, &self.lent.bounding)?;
        drop_from(caps::CapSet::Inheritable, &self.lent.bounding)?;
        let bounding = caps::read(None, caps::CapSet::Bounding)
            .map_err(|e| failed(format!("reading the bounding set: {e}")))?;
        if let Some(cap) = self.lent.bounding.iter().find(|c| bounding.contains(c)) {
            return Err(failed(format!(
                "the lent {cap} is still in the bounding set"
            )));
        }
        libcontainer::seccomp::initialize_seccomp(&self.seccomp)
            .map_err(|e| failed(format!("installing the container's seccomp filter: {e}")))?;
        drop_from(caps::CapSet::Effective, &self.lent.effective)?;
        drop_from(caps::CapSet::Permitted, &self.lent.permitted)?;
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
        let sys_admin = vec![caps::Capability::CAP_SYS_ADMIN];
        assert_eq!(
            f.lent,
            Lent {
                bounding: sys_admin.clone(),
                effective: sys_admin.clone(),
                permitted: sys_admin,
            }
        );
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
        assert_eq!(f.lent, Lent::default());
        assert_eq!(p, process(&[SpecCap::Chown], Some(true)));
        let mut p = process(&[SpecCap::SysAdmin, SpecCap::Setpcap], Some(false));
        let f = prepare(&mut p, &profile(LinuxSeccompAction::ScmpActAllow)).unwrap();
        assert_eq!(f.lent, Lent::default());
    }

    #[test]
    fn a_set_the_spec_leaves_unset_is_lent_nothing() {
        let mut p = process(&[SpecCap::Chown], None);
        let mut sets = p.capabilities().clone().unwrap();
        sets.set_effective(None);
        p.set_capabilities(Some(sets));
        let f = prepare(&mut p, &profile(LinuxSeccompAction::ScmpActAllow)).unwrap();
        assert!(
            f.lent.effective.is_empty() && f.lent.bounding.len() == 2,
            "{:?}",
            f.lent
        );
        assert_eq!(p.capabilities().as_ref().unwrap().effective(), &None);
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
