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
            let _watchdog = $crate::lab::Watchdog::start(stringify!($name));
            $body
        }
    };
}

/// The exit status of a lab test binary that stopped because the lab can no longer run
/// tests: a VM process that SIGKILL does not end, or a test past [`TEST_LIMIT`]. It is the
/// status `tests/lab/run` gives for a lab that crashed, and `tests/lab/test` does the same
/// for both: it reruns the tests that had not passed in a fresh lab, once, and says so.
pub const WEDGED: i32 = 125;

/// How long one lab test may run (`CARAPACE_LAB_TEST_LIMIT` seconds to change it). Every wait
/// of a test has its own, shorter, timeout; this bounds the waits that have none (a child
/// that will not be reaped, say), so that a wedged test cannot use up the whole lab session.
/// The longest test took 80 s on a quiet machine (session 12) and about twice that on a slow
/// day: 420 s leaves room for a slower one.
pub const TEST_LIMIT: Duration = Duration::from_secs(420);

/// Ends the test binary with [`WEDGED`] after printing `why` and what [`crate::diagnose::lab`]
/// finds.
pub fn wedged(why: &str) -> ! {
    eprintln!(
        "lab: {why}: the lab is wedged; what it shows:\n{}",
        crate::diagnose::lab()
    );
    eprintln!(
        "lab: ending the test binary with status {WEDGED} (the lab's tests rerun in a fresh lab)"
    );
    std::process::exit(WEDGED)
}

/// Watches one lab test: past its limit it declares the lab [`wedged`]. Dropping it (the test
/// ended, passed or not) stops the watch and prints how long the test took, so a slow lab run
/// shows where its time went.
pub struct Watchdog {
    /// Dropped with the watchdog, which ends the watch (the thread's receive disconnects).
    _stop: std::sync::mpsc::Sender<()>,
    name: String,
    started: Instant,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        eprintln!(
            "lab: {} took {:.1} s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }
}

impl Watchdog {
    /// Starts watching the test `name`.
    pub fn start(name: &str) -> Watchdog {
        let limit = std::env::var("CARAPACE_LAB_TEST_LIMIT")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(TEST_LIMIT, Duration::from_secs);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let watched = name.to_string();
        let name = name.to_string();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(limit) {
                wedged(&format!(
                    "the test {name} ran past its limit of {} s",
                    limit.as_secs()
                ));
            }
        });
        Watchdog {
            _stop: stop,
            name: watched,
            started: Instant::now(),
        }
    }
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
