//! A private containerd for one test: its own config, root, state and sockets under a fresh
//! directory, driven with `ctr`. Dropping it stops containerd and every shim it started,
//! unmounts what it left mounted and removes the directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The containerd namespace tests use.
pub const NAMESPACE: &str = "carapace-test";

/// A running containerd on private sockets.
pub struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Containerd {
    /// Starts containerd (Debian's, from PATH) and waits until it answers `ctr version`.
    pub fn start() -> Containerd {
        Self::start_with_env(&[])
    }

    /// Like [`Containerd::start`], with extra environment variables for containerd and the
    /// shims it starts (e.g. a PATH that finds a freshly built shim).
    pub fn start_with_env(env: &[(&str, std::ffi::OsString)]) -> Containerd {
        Self::start_with_cri(env, None)
    }

    /// Like [`Containerd::start_with_env`]; with `cri`, the CRI plugin runs, configured by
    /// the TOML tables `cri` returns for containerd's private directory (it may write files
    /// there, CNI configurations say). Without, the plugin (which binds 127.0.0.1 ports) is
    /// kept out.
    pub fn start_with_cri(
        env: &[(&str, std::ffi::OsString)],
        cri: Option<&dyn Fn(&Path) -> String>,
    ) -> Containerd {
        let dir = make_temp_dir("carapace-containerd");
        let config = dir.join("config.toml");
        let (disabled, cri_tables) = match cri {
            Some(tables) => ("", tables(&dir)),
            None => (
                r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#,
                String::new(),
            ),
        };
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
{disabled}

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

{cri_tables}
"#,
                d = dir.display()
            ),
        )
        .expect("write containerd config");
        let log = fs::File::create(dir.join("containerd.log")).expect("create containerd log");
        let child = Command::new("containerd")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start containerd (is it installed? run tests/install-deps)");
        let mut c = Containerd { dir, child };
        let ready = crate::lab::wait_for(Duration::from_secs(60), || {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("containerd exited at start with {status}:\n{}", c.log());
            }
            let ok = c.socket().exists()
                && c.ctr(["version"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            ok.then_some(())
        });
        assert!(
            ready.is_some(),
            "containerd did not answer within 60 s:\n{}",
            c.log()
        );
        c
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The private directory (config, state, logs) of this containerd.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What containerd has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A `ctr` command talking to this containerd in the test namespace.
    pub fn ctr<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.ctr_in(NAMESPACE, args)
    }

    /// A `ctr` command talking to this containerd in containerd namespace `namespace`.
    pub fn ctr_in<I, S>(&self, namespace: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace])
            .args(args);
        cmd
    }

    /// Runs `ctr` with `args` and returns its output, panicking with everything useful if it
    /// cannot be started or runs past [`CTR_TIMEOUT`] (then it is killed: a guest that stops
    /// making progress in the lab would otherwise hold the whole suite until its timeout).
    pub fn ctr_output<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.output_of(self.ctr(args))
    }

    /// Runs the `ctr` command `cmd` as [`Containerd::ctr_output`] does.
    pub fn output_of(&self, mut cmd: Command) -> Output {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ctr");
        let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
        let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
        let deadline = std::time::Instant::now() + CTR_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for ctr") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{what} did not finish within {CTR_TIMEOUT:?} (killed)\n--- containerd log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }
    }

    /// Imports an OCI image tarball.
    pub fn import(&self, tarball: &Path) {
        self.import_in(NAMESPACE, tarball)
    }

    /// Imports an OCI image tarball into containerd namespace `namespace`.
    pub fn import_in(&self, namespace: &str, tarball: &Path) {
        let out = self.output_of(self.ctr_in(
            namespace,
            [
                Path::new("images").as_os_str(),
                "import".as_ref(),
                tarball.as_os_str(),
            ],
        ));
        assert!(
            out.status.success(),
            "ctr images import {} failed: {}\n{}",
            tarball.display(),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

/// The longest any one `ctr` command of a test may take (the slowest, a first `ctr run` of a
/// pod in the lab, takes about 10 s).
pub const CTR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(240);

/// `ctr` helpers tests share: commands that must succeed, task status, delete with the
/// exit status containerd reports.
impl Containerd {
    /// A failure report: the command's status and output, and containerd's log.
    pub fn explain(&self, what: &str, out: &Output) -> String {
        format!(
            "{what}: status {:?}\nstdout: {}\nstderr: {}\n--- containerd log ---\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        )
    }

    /// Runs `ctr args`, which must succeed, and returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr_output(args);
        assert!(
            out.status.success(),
            "{}",
            self.explain(&args.join(" "), &out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The STATUS column of `ctr task ls` for `id` ("absent" when it has no task).
    pub fn task_status(&self, id: &str) -> String {
        self.ctr_ok(&["task", "ls"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("absent")
            .to_string()
    }

    /// Deletes the task of `id`, checks the exit status `ctr task delete` reports
    /// (containerd 1.6's ctr warns "task ID exit with non-zero exit code N"), then removes the
    /// container.
    pub fn delete_task(&self, id: &str, status: u32) {
        let out = self.ctr_output(["task", "delete", id]);
        assert!(
            out.status.success(),
            "{}",
            self.explain("task delete", &out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reported = stderr
            .split("non-zero exit code ")
            .nth(1)
            .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        assert_eq!(reported, status, "{}", self.explain("task delete", &out));
        self.ctr_ok(&["container", "rm", id]);
    }
}

/// `ctr events` running in the background: every event containerd publishes, in order.
pub struct EventLog {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EventLog {
    /// Subscribes to containerd's events; returns once the subscription is in place.
    pub fn start(c: &Containerd) -> EventLog {
        let mut child = c
            .ctr(["events"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ctr events");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
            {
                sink.lock().expect("event log lock").push(line);
            }
        });
        // ctr subscribes right after it starts; give it that moment.
        std::thread::sleep(std::time::Duration::from_millis(500));
        EventLog { child, lines }
    }

    /// The `/tasks/...` topics published for container `id` so far, in order, each with its
    /// event's JSON.
    pub fn task_events(&self, id: &str) -> Vec<(String, String)> {
        let needle = format!("\"container_id\":\"{id}\"");
        self.lines
            .lock()
            .expect("event log lock")
            .iter()
            .filter_map(|l| {
                let at = l.find(" /tasks/")?;
                let rest = &l[at + 1..];
                let (topic, json) = rest.split_once(' ').unwrap_or((rest, ""));
                json.contains(&needle)
                    .then(|| (topic.to_string(), json.to_string()))
            })
            .collect()
    }

    /// Everything `ctr events` printed, for failure reports.
    pub fn dump(&self) -> String {
        self.lines.lock().expect("event log lock").join("\n")
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Shims outlive containerd by design: end every process started for this instance.
        let marker = self.dir.to_string_lossy().into_owned();
        for pid in processes_mentioning(&marker) {
            if pid != self.child.id() {
                // SAFETY: kill(2) with a pid read from /proc and a valid signal number.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Creates a fresh directory `/tmp/<prefix>.<random>`.
pub fn make_temp_dir(prefix: &str) -> PathBuf {
    let mut template = format!("/tmp/{prefix}.XXXXXX\0").into_bytes();
    // SAFETY: mkdtemp gets a writable NUL-terminated buffer that ends in XXXXXX.
    let p = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
    assert!(!p.is_null(), "mkdtemp: {}", std::io::Error::last_os_error());
    template.pop();
    PathBuf::from(String::from_utf8(template).expect("mkdtemp returns the template's bytes"))
}

/// Pids of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    processes_whose_cmdline(|c| String::from_utf8_lossy(c).contains(needle))
}

/// Processes running the program `name`: those whose argv[0] has that file name (a process
/// that only mentions it, a `cat` of its binary say, is not one).
pub fn processes_named(name: &str) -> Vec<u32> {
    processes_whose_cmdline(|c| {
        let argv0 = c.split(|&b| b == 0).next().unwrap_or_default();
        argv0.rsplit(|&b| b == b'/').next() == Some(name.as_bytes())
    })
}

/// Pids of the processes whose `/proc/<pid>/cmdline` (NUL-separated) `matches`.
fn processes_whose_cmdline(matches: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| matches(&c)))
        .collect()
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts
}

fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).expect("no NUL in a path");
        // SAFETY: umount2 with a NUL-terminated path; MNT_DETACH never blocks.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_named_by_its_program_not_by_its_arguments() {
        // `; true`: the shell stays, with the name among its arguments.
        let mut mentions = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true", "/x/carapace-test-name"])
            .spawn()
            .unwrap();
        let id = mentions.id();
        // Its command line reads empty until exec has set it up.
        for _ in 0..100 {
            if std::fs::read(format!("/proc/{id}/cmdline")).is_ok_and(|c| !c.is_empty()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let named = processes_named("sh").contains(&id);
        let by_argument = processes_named("carapace-test-name").contains(&id);
        let mentioned = processes_mentioning("carapace-test-name").contains(&id);
        let _ = mentions.kill();
        let _ = mentions.wait();
        assert!(
            named && mentioned && !by_argument,
            "{named} {mentioned} {by_argument}"
        );
    }
}
