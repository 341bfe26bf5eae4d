//! The spec's OCI hooks that belong on the host, run by the shim where runc runs them:
//! `prestart` and `createRuntime` in Create once the pod's VM is up (the state's pid is the
//! VMM's, whose network namespace is the pod's: a CNI hook such as nerdctl's sets the pod's
//! network up there, and Start joins the VM's NIC to it), `poststart` after Start, and
//! `poststop` after Delete. `createContainer` and `startContainer` hooks would run a host
//! program inside the container's namespaces, which are in the guest: such a spec is refused
//! by name. The guest never sees any hook.
//!
//! Hooks come from containerd's client, which runc trusts with them as root on the host; the
//! shim runs them with the same trust and nothing from the guest reaches them.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use oci_spec::runtime::{Hook, Spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Result, ShimError};

/// The most of a failing hook's output kept for its error.
const OUTPUT_KEPT: usize = 2048;

/// The host-side hooks of one container, taken out of its spec.
#[derive(Debug, Clone, Default)]
pub struct HostHooks {
    prestart: Vec<Hook>,
    create_runtime: Vec<Hook>,
    poststart: Vec<Hook>,
    poststop: Vec<Hook>,
    annotations: HashMap<String, String>,
}

/// The container's lifecycle state a hook reads on its stdin (the OCI runtime spec's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Being created (prestart, createRuntime).
    Creating,
    /// Running (poststart).
    Running,
    /// Deleted (poststop).
    Stopped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// Takes the hooks out of `spec` (so none reaches the guest), refusing those that would run
/// inside the container's namespaces, and checks every hook's path and timeout.
pub fn take(spec: &mut Spec) -> Result<HostHooks> {
    let Some(hooks) = spec.hooks().clone() else {
        return Ok(HostHooks::default());
    };
    spec.set_hooks(None);
    for (kind, list) in [
        ("createContainer", hooks.create_container()),
        ("startContainer", hooks.start_container()),
    ] {
        if let Some(h) = list.as_ref().and_then(|l| l.first()) {
            return Err(ShimError::InvalidArgument(format!(
                "the spec's {kind} hook {} would run a host program inside the container's \
                 namespaces, which are in the pod's VM: carapace cannot run it",
                h.path().display()
            )));
        }
    }
    let list = |l: &Option<Vec<Hook>>| l.clone().unwrap_or_default();
    let taken = HostHooks {
        prestart: list(hooks.prestart()),
        create_runtime: list(hooks.create_runtime()),
        poststart: list(hooks.poststart()),
        poststop: list(hooks.poststop()),
        annotations: spec.annotations().clone().unwrap_or_default(),
    };
    for h in taken.all() {
        if !h.path().is_absolute() {
            return Err(ShimError::InvalidArgument(format!(
                "hook path {:?} is not absolute",
                h.path()
            )));
        }
        if h.timeout().is_some_and(|t| t <= 0) {
            return Err(ShimError::InvalidArgument(format!(
                "hook {}: timeout {} is not positive",
                h.path().display(),
                h.timeout().unwrap_or_default()
            )));
        }
    }
    Ok(taken)
}

impl HostHooks {
    fn all(&self) -> impl Iterator<Item = &Hook> {
        self.prestart
            .iter()
            .chain(&self.create_runtime)
            .chain(&self.poststart)
            .chain(&self.poststop)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.all().next().is_none()
    }

    /// prestart then createRuntime, in order; the first failure fails the Create.
    pub async fn create(&self, id: &str, pid: u32, bundle: &str) -> Result<()> {
        for (kind, list) in [
            ("prestart", &self.prestart),
            ("createRuntime", &self.create_runtime),
        ] {
            for h in list {
                run(kind, h, &self.state(id, Status::Creating, pid, bundle)).await?;
            }
        }
        Ok(())
    }

    /// poststart, in order; a failure is logged and the others still run (the spec's rule).
    pub async fn poststart(&self, id: &str, pid: u32, bundle: &str) {
        for h in &self.poststart {
            if let Err(e) = run(
                "poststart",
                h,
                &self.state(id, Status::Running, pid, bundle),
            )
            .await
            {
                log::warn!("{id}: {e}");
            }
        }
    }

    /// poststop, in order; a failure is logged and the others still run.
    pub async fn poststop(&self, id: &str, pid: u32, bundle: &str) {
        for h in &self.poststop {
            if let Err(e) = run("poststop", h, &self.state(id, Status::Stopped, pid, bundle)).await
            {
                log::warn!("{id}: {e}");
            }
        }
    }

    fn state(&self, id: &str, status: Status, pid: u32, bundle: &str) -> Vec<u8> {
        let state = serde_json::json!({
            "ociVersion": "1.0.2",
            "id": id,
            "status": status.as_str(),
            "pid": pid,
            "bundle": bundle,
            "annotations": self.annotations,
        });
        state.to_string().into_bytes()
    }
}

/// Runs one hook as runc does: `path` with `args` (the first is its argv[0]) and exactly
/// `env`, the state on stdin, killed past its timeout. An error names the hook and what it
/// printed.
async fn run(kind: &str, hook: &Hook, state: &[u8]) -> Result<()> {
    let path = hook.path();
    let failed = |why: String| {
        ShimError::FailedPrecondition(format!("{kind} hook {}: {why}", path.display()))
    };
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = std::process::Command::new(path);
    if let Some((arg0, rest)) = args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let finished = async {
        // A hook that does not read its stdin must not block the shim.
        let _ = stdin.write_all(state).await;
        drop(stdin);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut stdout = (&mut stdout).take(OUTPUT_KEPT as u64 * 4);
        let mut stderr = (&mut stderr).take(OUTPUT_KEPT as u64 * 4);
        let (_, _, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        (status, out, err)
    };
    let (status, out, err) = match hook.timeout() {
        Some(t) => tokio::time::timeout(Duration::from_secs(t as u64), finished)
            .await
            .map_err(|_| {
                failed(format!(
                    "did not finish within its timeout of {t} s; killed"
                ))
            })?,
        None => finished.await,
    };
    let status = status.map_err(|e| failed(format!("waiting for it: {e}")))?;
    if status.success() {
        return Ok(());
    }
    let said = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let s = s.trim();
        s[s.len().saturating_sub(OUTPUT_KEPT)..].to_string()
    };
    let mut why = format!("{status}");
    for (name, text) in [("stderr", said(&err)), ("stdout", said(&out))] {
        if !text.is_empty() {
            why.push_str(&format!("; {name}: {text}"));
        }
    }
    Err(failed(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(hooks: serde_json::Value) -> Spec {
        let mut v = serde_json::to_value(Spec::default()).unwrap();
        v["hooks"] = hooks;
        v["annotations"] = serde_json::json!({"a": "b"});
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn hooks_are_taken_out_of_the_spec_and_in_container_ones_refused_by_name() {
        let mut spec = spec_with(serde_json::json!({
            "createRuntime": [{"path": "/bin/true"}],
            "poststop": [{"path": "/bin/true"}],
        }));
        let hooks = take(&mut spec).unwrap();
        assert!(spec.hooks().is_none(), "the guest's spec keeps no hook");
        assert!(!hooks.is_empty());
        for kind in ["createContainer", "startContainer"] {
            let mut spec =
                spec_with(serde_json::json!({ kind: [{"path": "/usr/bin/nvidia-ctk"}] }));
            let err = take(&mut spec).unwrap_err().to_string();
            assert!(
                err.contains(kind) && err.contains("/usr/bin/nvidia-ctk"),
                "{err}"
            );
        }
        let mut relative = spec_with(serde_json::json!({"prestart": [{"path": "hook"}]}));
        assert!(take(&mut relative)
            .unwrap_err()
            .to_string()
            .contains("not absolute"));
        let mut zero =
            spec_with(serde_json::json!({"prestart": [{"path": "/bin/true", "timeout": 0}]}));
        assert!(take(&mut zero)
            .unwrap_err()
            .to_string()
            .contains("not positive"));
    }

    #[tokio::test]
    async fn a_hook_reads_the_state_on_stdin_with_exactly_its_env_and_argv0() {
        let dir = std::env::temp_dir().join(format!("carapace-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let script = format!(
            "cat >{0}.state; tr '\\0' ' ' </proc/$$/cmdline >{0}.args; echo \"${{HOOK_VAR:-unset}} ${{HOME:-nohome}}\" >>{0}.args",
            out.display()
        );
        let mut spec = spec_with(serde_json::json!({
            "createRuntime": [{"path": "/bin/sh", "args": ["my-hook", "-c", script, "first"], "env": ["HOOK_VAR=42"]}],
        }));
        let hooks = take(&mut spec).unwrap();
        hooks.create("c1", 4242, "/run/bundle").await.unwrap();
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.with_extension("state")).unwrap()).unwrap();
        assert_eq!(state["id"], "c1");
        assert_eq!(state["status"], "creating");
        assert_eq!(state["pid"], 4242);
        assert_eq!(state["bundle"], "/run/bundle");
        assert_eq!(state["annotations"]["a"], "b");
        let args = std::fs::read_to_string(out.with_extension("args")).unwrap();
        assert!(
            args.starts_with("my-hook -c ") && args.trim_end().ends_with(" first 42 nohome"),
            "argv and env of the hook: {args:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_failing_or_hanging_hook_fails_create_naming_it_and_what_it_said() {
        let mut spec = spec_with(serde_json::json!({
            "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no-network >&2; exit 3"]}],
        }));
        let err = take(&mut spec)
            .unwrap()
            .create("c1", 1, "/b")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prestart hook /bin/sh")
                && err.contains("3")
                && err.contains("no-network"),
            "{err}"
        );

        let mut spec = spec_with(serde_json::json!({
            "createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}],
        }));
        let t = std::time::Instant::now();
        let err = take(&mut spec)
            .unwrap()
            .create("c1", 1, "/b")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeout of 1 s"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10));

        let mut spec = spec_with(serde_json::json!({"prestart": [{"path": "/nonexistent/hook"}]}));
        let err = take(&mut spec)
            .unwrap()
            .create("c1", 1, "/b")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/hook") && err.contains("cannot run it"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_failing_poststart_or_poststop_hook_does_not_stop_the_others() {
        let dir = std::env::temp_dir().join(format!("carapace-hooks-post-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mark = dir.join("second");
        let mut spec = spec_with(serde_json::json!({
            "poststop": [
                {"path": "/bin/false"},
                {"path": "/bin/sh", "args": ["sh", "-c", format!("cat >{}", mark.display())]},
            ],
        }));
        take(&mut spec).unwrap().poststop("c1", 7, "/b").await;
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&mark).unwrap()).unwrap();
        assert_eq!(state["status"], "stopped");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
