//! Running tests inside the lab: a test declared with [`lab_test!`] runs its body when it is
//! already inside the lab (`make test` runs the whole test binary there in one session), and
//! otherwise boots a lab of its own with `tests/lab/run` and runs just itself in it.

use std::process::Command;
use std::time::{Duration, Instant};

/// True when this process runs inside the lab (set by `tests/lab/run`).
pub fn inside() -> bool {
    std::env::var_os("CARAPACE_IN_LAB").is_some_and(|v| v == "1")
}

/// Runs the test named `name` (its path inside the test binary) in a fresh lab session and
/// panics unless it passes there.
pub fn run_self_in_lab(name: &str) {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let runner = crate::repo_root().join("tests/lab/run");
    let status = Command::new(&runner)
        .arg("--")
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .status()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", runner.display()));
    assert!(
        status.success(),
        "lab test {name} failed in the lab: {status}"
    );
}

/// Declares a test that boots VMs and so must run inside the lab.
#[macro_export]
macro_rules! lab_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            if !$crate::lab::inside() {
                let path = concat!(module_path!(), "::", stringify!($name));
                // The test binary's own name for a test drops the crate name.
                let name = path.split_once("::").map_or(path, |(_, rest)| rest);
                $crate::lab::run_self_in_lab(name);
                return;
            }
            $body
        }
    };
}

/// Polls `f` every 10 ms until it returns `Some`, or gives up after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Milliseconds in `d`, with a fraction, for printing measured figures.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
