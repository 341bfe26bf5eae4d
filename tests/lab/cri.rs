//! Kubernetes' CRI, driven as a kubelet drives it (containerd's CRI plugin, the reference CNI
//! plugins), with runc and carapace in the same run: runc is the reference, and every
//! assertion holds for both handlers but where a VM cannot do what runc does (item 4 of the
//! CRI issue: host namespaces), which carapace refuses by name. Pod namespaces and sysctls,
//! the pod's /dev/shm, security contexts (seccomp, capabilities, users, read-only rootfs,
//! masked paths, no_new_privs, privileged) for a container's first process and its execs, a
//! node kernel's networking inside the pod, StopContainer/RemoveContainer, CRI logs with
//! ReopenContainerLog, stats, and a pod's HTTP server reached from the host through a CNI
//! port mapping.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use carapace_tests::cri::{
    pod_namespaces, pod_security, v1 as cri, with_mounts, Cri, KubeletMemoryVolume, HANDLERS,
    SUBNET,
};
use carapace_tests::lab::wait_for;
use carapace_tests::lab_test;

/// The pod's sandbox id for `handler` after RunPodSandbox of `config`, which must succeed.
fn run_pod(c: &Cri, handler: &str, config: &cri::PodSandboxConfig) -> String {
    c.run_pod(handler, config)
        .unwrap_or_else(|e| panic!("RunPodSandbox with {handler}: {e}\n{}", c.log()))
}

/// CreateContainer and StartContainer of `config` in `pod`, which must succeed.
fn start(
    c: &Cri,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    c.start_container(pod, pod_config, config)
        .unwrap_or_else(|e| panic!("starting container {name}: {e}\n{}", c.log()))
}

/// A container config with its security context edited by `edit`.
fn with_security(
    mut config: cri::ContainerConfig,
    edit: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> cri::ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    edit(linux.security_context.get_or_insert_with(Default::default));
    config
}

/// The `Key:` lines of `/proc/<pid>/status` (self, or 1 for the first process) a test compares.
fn status_lines(c: &Cri, id: &str, pid: &str, keys: &[&str]) -> Vec<String> {
    let status = c.exec_ok(id, &["cat", &format!("/proc/{pid}/status")]);
    status
        .lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(&format!("{k}:"))))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

lab_test! {
    fn cri_pod_containers_share_the_sandboxs_namespaces_sysctls_dev_shm_and_memory_empty_dirs() {
        let c = Cri::start();
        for handler in HANDLERS {
            let name = format!("ns-{handler}");
            let mut pod = c.pod_config(&name);
            pod.linux.as_mut().unwrap().sysctls = HashMap::from([
                ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
                ("net.ipv4.ping_group_range".to_string(), "0 2147483647".to_string()),
            ]);
            pod_namespaces(&mut pod).pid = cri::NamespaceMode::Pod as i32;
            let sid = run_pod(&c, handler, &pod);
            let pod_pid = |config: cri::ContainerConfig| {
                with_security(config, |s| {
                    s.namespace_options.as_mut().unwrap().pid = cri::NamespaceMode::Pod as i32;
                })
            };
            // A memory emptyDir as the kubelet lays it out: the whole volume in a, a subPath
            // of it in b.
            let kubelet = KubeletMemoryVolume::new(&c.dir().join(format!("kubelet-{handler}")), &name, "cache", "a/b", "b");
            let a = with_mounts(c.container_config("a", &["sleep", "3600"]), &[("/cache", &kubelet.volume)]);
            let a = start(&c, &sid, &pod, pod_pid(a));
            let b = with_mounts(c.container_config("b", &["sleep", "3600"]), &[("/sub", &kubelet.subpath)]);
            let b = start(&c, &sid, &pod, pod_pid(b));

            // shareProcessNamespace: pid 1 is the sandbox's pause process, and each container
            // sees the other's processes.
            let init = c.exec_ok(&a, &["sh", "-c", "tr '\\0' ' ' </proc/1/cmdline"]);
            assert_eq!(init, "sleep 2147483647", "{handler}: pid 1 of the pod");
            let ps = c.exec_ok(&b, &["ps", "-o", "args"]);
            assert!(ps.matches("sleep 3600").count() >= 2, "{handler}: ps in b: {ps}");
            // The sandbox's IPC and UTS namespaces, the pod's hostname and sysctls.
            for id in [&a, &b] {
                let same = c.exec_ok(
                    id,
                    &["sh", "-c", "[ $(readlink /proc/1/ns/ipc) = $(readlink /proc/self/ns/ipc) ] && [ $(readlink /proc/1/ns/uts) = $(readlink /proc/self/ns/uts) ] && echo same"],
                );
                assert_eq!(same, "same", "{handler}: {id} in the sandbox's ipc and uts");
                assert_eq!(c.exec_ok(id, &["hostname"]), name, "{handler}");
                assert_eq!(c.exec_ok(id, &["cat", "/proc/sys/kernel/shm_rmid_forced"]), "1", "{handler}");
                assert_eq!(
                    c.exec_ok(id, &["cat", "/proc/sys/net/ipv4/ping_group_range"]),
                    "0\t2147483647",
                    "{handler}"
                );
            }
            // /dev/shm is one tmpfs for the pod: a file one container writes the other reads.
            let shm = c.exec_ok(&a, &["sh", "-c", "awk '$2 == \"/dev/shm\" { print $3 }' /proc/mounts"]);
            assert_eq!(shm, "tmpfs", "{handler}: /dev/shm's file system");
            c.exec_ok(&a, &["sh", "-c", "echo shared-by-a >/dev/shm/note"]);
            assert_eq!(c.exec_ok(&b, &["cat", "/dev/shm/note"]), "shared-by-a", "{handler}");
            // The emptyDir is a tmpfs, and its subPath the same directory: under carapace both
            // in guest memory, so nothing of it reaches the host's tmpfs.
            let fs = c.exec_ok(&a, &["sh", "-c", "awk '$2 == \"/cache\" { print $3 }' /proc/mounts"]);
            assert_eq!(fs, "tmpfs", "{handler}: the memory emptyDir's file system");
            c.exec_ok(&a, &["sh", "-c", "echo written-by-a >/cache/a/b/note"]);
            assert_eq!(c.exec_ok(&b, &["cat", "/sub/note"]), "written-by-a", "{handler}: the subPath");
            c.exec_ok(&b, &["sh", "-c", "echo written-by-b >/sub/back"]);
            assert_eq!(c.exec_ok(&a, &["cat", "/cache/a/b/back"]), "written-by-b", "{handler}");
            let on_host = kubelet.volume.join("a/b/note").exists();
            assert_eq!(on_host, handler == "runc", "{handler}: the volume's files are on the host's tmpfs only under runc");
            c.remove_pod(&sid);
            drop(kubelet);
        }
        drop(c);
    }
}

lab_test! {
    fn cri_security_contexts_hold_for_a_containers_first_process_and_its_execs() {
        let c = Cri::start();
        // A Localhost profile that lets everything but sethostname through, as critest's.
        let profile = c.dir().join("no-sethostname.json");
        std::fs::write(
            &profile,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let keys = ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"];
        let mut seen: HashMap<&str, Vec<(String, Vec<String>)>> = HashMap::new();
        for handler in HANDLERS {
            let name = format!("sec-{handler}");
            let mut pod = c.pod_config(&name);
            // A pod must be privileged for a privileged container in it.
            pod_security(&mut pod).privileged = true;
            let sid = run_pod(&c, handler, &pod);

            // A user, groups, RuntimeDefault seccomp, no_new_privs, read-only rootfs.
            let user = with_security(c.container_config("user", &["sleep", "3600"]), |s| {
                s.run_as_user = Some(cri::Int64Value { value: 1000 });
                s.run_as_group = Some(cri::Int64Value { value: 2000 });
                s.supplemental_groups = vec![3000];
                s.readonly_rootfs = true;
                s.no_new_privs = true;
                s.seccomp = Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                });
            });
            let user = start(&c, &sid, &pod, user);
            // Root with capabilities added and dropped, and the Localhost profile.
            let caps = with_security(c.container_config("caps", &["sleep", "3600"]), |s| {
                s.capabilities = Some(cri::Capability {
                    add_capabilities: vec!["NET_ADMIN".into(), "SYS_ADMIN".into()],
                    drop_capabilities: vec!["CHOWN".into(), "NET_RAW".into()],
                    ..Default::default()
                });
                s.seccomp = Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: profile.to_string_lossy().into_owned(),
                });
            });
            let caps = start(&c, &sid, &pod, caps);

            let mut record = |what: &str, lines: Vec<String>| {
                seen.entry(handler).or_default().push((what.to_string(), lines));
            };
            for (id, what) in [(&user, "user"), (&caps, "caps")] {
                let first = status_lines(&c, id, "1", &keys);
                let exec = status_lines(&c, id, "self", &keys);
                assert!(first.contains(&"Seccomp: 2".to_string()), "{handler} {what}: {first:?}");
                assert_eq!(first, exec, "{handler} {what}: an exec has its container's context");
                record(what, first);
            }
            // RunAsUserName: the image's /etc/passwd names the user.
            let named = with_security(c.container_config("named", &["sleep", "3600"]), |s| {
                s.run_as_username = "nobody".into();
            });
            let named = start(&c, &sid, &pod, named);
            assert_eq!(c.exec_ok(&named, &["id", "-u"]), "65534", "{handler}: nobody");
            assert_eq!(c.exec_ok(&user, &["id", "-u"]), "1000", "{handler}");
            assert_eq!(c.exec_ok(&user, &["id", "-g"]), "2000", "{handler}");
            let groups = c.exec_ok(&user, &["id", "-G"]);
            assert!(groups.split(' ').any(|g| g == "3000"), "{handler}: groups {groups}");
            let (code, _, err) = c.exec(&user, &["touch", "/written"]);
            assert_ne!(code, 0, "{handler}: the rootfs is read-only: {err}");
            // Masked and read-only paths, as the runtime spec of containerd makes them.
            // (as root: the file is root's own, a masked one /dev/null)
            assert_eq!(c.exec_ok(&caps, &["sh", "-c", "wc -c </proc/timer_list"]), "0", "{handler}");
            let (code, _, _) = c.exec(&caps, &["sh", "-c", "echo 1 >/proc/sys/kernel/domainname"]);
            assert_ne!(code, 0, "{handler}: /proc/sys is read-only");
            // The Localhost profile blocks sethostname even with CAP_SYS_ADMIN.
            let (code, _, err) = c.exec(&caps, &["hostname", "blocked"]);
            assert!(code != 0 && err.contains("not permitted"), "{handler}: hostname: {code} {err}");
            // NET_ADMIN was added: the container may change its links.
            c.exec_ok(&caps, &["ip", "link", "set", "lo", "mtu", "60000"]);

            // Privileged: every capability, no seccomp, and the network features a node
            // kernel offers a pod (bridge, veth, VLAN, tun, iptables NAT redirect).
            let privileged = with_security(
                c.container_config("privileged", &["sleep", "3600"]),
                |s| s.privileged = true,
            );
            let mut privileged = privileged;
            privileged.mounts.push(cri::Mount {
                container_path: "/host-usr".into(),
                host_path: "/usr".into(),
                readonly: true,
                ..Default::default()
            });
            let privileged = start(&c, &sid, &pod, privileged);
            let lines = status_lines(&c, &privileged, "self", &keys);
            assert!(lines.contains(&"Seccomp: 0".to_string()), "{handler}: {lines:?}");
            record("privileged", lines);
            for cmd in [
                "ip link add br-test type bridge",
                // busybox's ip names the peer itself (veth0)
                "ip link add veth-a type veth",
                "ip link set veth-a master br-test",
                "ip link add link eth0 name eth0.10 type vlan id 10",
                "tunctl -t tap-test",
            ] {
                let (code, out, err) = c.exec(&privileged, &["sh", "-c", cmd]);
                assert_eq!(code, 0, "{handler}: {cmd}: {out} {err}");
            }
            let iptables = "XTABLES_LIBDIR=/host-usr/lib/x86_64-linux-gnu/xtables /host-usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path /host-usr/lib/x86_64-linux-gnu /host-usr/sbin/xtables-nft-multi iptables";
            let redirect = format!(
                "mkdir -p /tmp/www && echo redirected >/tmp/www/index.html && \
                 httpd -p 127.0.0.1:8081 -h /tmp/www </dev/null >/dev/null 2>&1 && \
                 {iptables} -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport 81 -j REDIRECT --to-ports 8081 && \
                 {iptables} -t nat -S OUTPUT && \
                 printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 10 127.0.0.1 81"
            );
            let (code, out, err) = c.exec(&privileged, &["sh", "-c", &redirect]);
            assert!(
                code == 0 && out.contains("redirected"),
                "{handler}: iptables NAT REDIRECT in the pod: {code} {out} {err}"
            );
            c.remove_pod(&sid);
        }
        // What carapace's guest shows a container is what runc's host shows it.
        assert_eq!(seen["carapace"], seen["runc"], "carapace against runc");
        drop(c);
    }
}

lab_test! {
    fn cri_stop_remove_logs_and_stats_as_with_runc() {
        let c = Cri::start();
        for handler in HANDLERS {
            let name = format!("life-{handler}");
            let pod = c.pod_config(&name);
            let sid = run_pod(&c, handler, &pod);

            // A signal sent right after StartContainer returns reaches the process: pid 1 of
            // its namespace ignores SIGTERM, so StopContainer's SIGKILL ends it after 2 s.
            let sleeper = start(&c, &sid, &pod, c.container_config("sleeper", &["sleep", "3600"]));
            let t = Instant::now();
            c.stop_container(&sleeper, 2)
                .unwrap_or_else(|e| panic!("{handler}: StopContainer: {e}\n{}", c.log()));
            let took = t.elapsed();
            assert_eq!(c.wait_exit(&sleeper, Duration::from_secs(5)), Some(137), "{handler}");
            assert!(took < Duration::from_secs(30), "{handler}: StopContainer took {took:?}");
            c.remove_container(&sleeper)
                .unwrap_or_else(|e| panic!("{handler}: RemoveContainer: {e}"));
            let left = c
                .call(|mut r| async move {
                    r.list_containers(cri::ListContainersRequest { filter: None }).await
                })
                .unwrap()
                .containers;
            assert!(left.iter().all(|k| k.id != sleeper), "{handler}: removed: {left:?}");

            // Exec with a terminal and stdin over CRI streaming (kubectl exec -it): the shell
            // sees a terminal, runs what it is sent and its exit status comes back.
            let shell = start(&c, &sid, &pod, c.container_config("shell", &["sleep", "3600"]));
            let (out, status) = c
                .exec_tty(
                    &shell,
                    &["sh"],
                    b"[ -t 0 ] && echo tty-$((40+2)); exit 3\n",
                    Duration::from_secs(60),
                )
                .unwrap_or_else(|e| panic!("{handler}: Exec with a tty: {e}\n{}", c.log()));
            assert!(out.contains("tty-42"), "{handler}: the exec's terminal: {out:?}");
            assert!(
                status.contains("NonZeroExitCode") && status.contains("\"3\""),
                "{handler}: the exec's status: {status:?} (terminal: {out:?})"
            );
            c.stop_container(&shell, 0)
                .unwrap_or_else(|e| panic!("{handler}: StopContainer: {e}"));
            c.remove_container(&shell)
                .unwrap_or_else(|e| panic!("{handler}: RemoveContainer: {e}"));

            // Attach to a container's own terminal and stdin (kubectl attach -it): what it is
            // sent runs in the container's first process, whose exit ends the stream.
            let mut config = c.container_config("attached", &["sh"]);
            (config.stdin, config.tty) = (true, true);
            let attached = start(&c, &sid, &pod, config);
            let (out, _) = c
                .attach_tty(&attached, b"echo attached-$((40+2)); exit 5\n", Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{handler}: Attach: {e}\n{}", c.log()));
            assert!(out.contains("attached-42"), "{handler}: the attached terminal: {out:?}");
            assert_eq!(c.wait_exit(&attached, Duration::from_secs(30)), Some(5), "{handler}: the attached shell's status");
            c.remove_container(&attached)
                .unwrap_or_else(|e| panic!("{handler}: RemoveContainer: {e}"));

            // A process that handles SIGTERM exits with its own status.
            let trapper = start(
                &c,
                &sid,
                &pod,
                c.container_config(
                    "trapper",
                    &["sh", "-c", "trap 'echo got-term; exit 7' TERM; i=0; while :; do echo line$i; i=$((i+1)); sleep 0.2; done"],
                ),
            );
            let log = c.log_directory(&name).join("trapper.log");
            let logged = |needle: &str, path: &std::path::Path| {
                wait_for(Duration::from_secs(30), || {
                    std::fs::read_to_string(path).ok().filter(|t| t.contains(needle))
                })
            };
            let text = logged("line3", &log)
                .unwrap_or_else(|| panic!("{handler}: no CRI log at {}\n{}", log.display(), c.log()));
            assert!(
                text.lines().any(|l| l.ends_with(" stdout F line1")),
                "{handler}: CRI log format: {text}"
            );
            // ReopenContainerLog: the rotated file stops growing, the new one gets the lines.
            let rotated = log.with_extension("log.1");
            std::fs::rename(&log, &rotated).unwrap();
            let reopen = cri::ReopenContainerLogRequest { container_id: trapper.clone() };
            c.call(|mut r| async move { r.reopen_container_log(reopen).await })
                .unwrap_or_else(|e| panic!("{handler}: ReopenContainerLog: {e}"));
            assert!(logged("stdout F line", &log).is_some(), "{handler}: lines after reopening");

            // ListContainerStats of the pod names the running container with its figures.
            let listed = c
                .call(|mut r| {
                    let filter = cri::ContainerStatsFilter { pod_sandbox_id: sid.clone(), ..Default::default() };
                    async move { r.list_container_stats(cri::ListContainerStatsRequest { filter: Some(filter) }).await }
                })
                .unwrap_or_else(|e| panic!("{handler}: ListContainerStats: {e}"))
                .stats;
            let mine = listed.iter().find(|s| s.attributes.as_ref().is_some_and(|a| a.id == trapper));
            let listed_cpu = mine.and_then(|s| s.cpu.as_ref()).and_then(|c| c.usage_core_nano_seconds.as_ref()).map_or(0, |v| v.value);
            assert!(listed_cpu > 0, "{handler}: ListContainerStats: {listed:?}");

            // Stats with real figures.
            let stats = c
                .call(|mut r| {
                    let container_id = trapper.clone();
                    async move { r.container_stats(cri::ContainerStatsRequest { container_id }).await }
                })
                .unwrap_or_else(|e| panic!("{handler}: ContainerStats: {e}\n{}", c.log()))
                .stats
                .unwrap();
            let cpu = stats.cpu.and_then(|c| c.usage_core_nano_seconds).map_or(0, |v| v.value);
            let mem = stats.memory.and_then(|m| m.working_set_bytes).map_or(0, |v| v.value);
            assert!(cpu > 0 && mem > 0, "{handler}: stats cpu {cpu} ns, memory {mem} B");

            // PodSandboxStats: the pod's own figures (its cgroup parent's: for carapace, the
            // VM's), with its running container's among them.
            let pod_stats = c
                .call(|mut r| {
                    let pod_sandbox_id = sid.clone();
                    async move { r.pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id }).await }
                })
                .unwrap_or_else(|e| panic!("{handler}: PodSandboxStats: {e}\n{}", c.log()))
                .stats
                .and_then(|s| s.linux)
                .unwrap_or_else(|| panic!("{handler}: PodSandboxStats without Linux figures"));
            assert!(
                pod_stats.containers.iter().any(|k| k.attributes.as_ref().is_some_and(|a| a.id == trapper)),
                "{handler}: PodSandboxStats lists the container: {pod_stats:?}"
            );
            let pod_cpu = pod_stats.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map_or(0, |v| v.value);
            let pod_mem = pod_stats.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map_or(0, |v| v.value);
            println!("lab figure: {handler}: PodSandboxStats cpu {pod_cpu} ns, memory working set {pod_mem} B");
            assert!(pod_cpu > 0 && pod_mem > 0, "{handler}: PodSandboxStats figures: {pod_stats:?}");

            c.stop_container(&trapper, 30).unwrap();
            assert_eq!(c.wait_exit(&trapper, Duration::from_secs(5)), Some(7), "{handler}");
            assert!(logged("got-term", &log).is_some(), "{handler}: the trap ran");
            c.remove_pod(&sid);
        }
        drop(c);
    }
}

/// An HTTP GET of `/` from `addr`; the response.
fn http_get(addr: &str) -> std::io::Result<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

lab_test! {
    fn cri_a_pods_http_server_is_reached_through_its_port_mapping_and_port_forward_and_host_namespaces_are_refused() {
        let c = Cri::start();
        let gateway = SUBNET.replace(".0/24", ".1");
        for (i, handler) in HANDLERS.iter().enumerate() {
            let name = format!("web-{handler}");
            let mut pod = c.pod_config(&name);
            let host_port = 18080 + i as i32;
            pod.port_mappings = vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 80,
                host_port,
                host_ip: String::new(),
            }];
            let sid = run_pod(&c, handler, &pod);
            let web = c.container_config(
                "web",
                &["sh", "-c", "mkdir -p /tmp/www && echo hello-from-$(hostname) >/tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"],
            );
            start(&c, &sid, &pod, web);
            let ip = c.pod_ip(&sid);
            assert!(!ip.is_empty(), "{handler}: the pod has an address");
            let want = format!("hello-from-{name}");
            for addr in [format!("{ip}:80"), format!("{gateway}:{host_port}")] {
                let got = wait_for(Duration::from_secs(30), || {
                    http_get(&addr).ok().filter(|r| r.contains(&want))
                });
                assert!(got.is_some(), "{handler}: GET http://{addr}/: {:?}\n{}", http_get(&addr), c.log());
            }
            // CRI PortForward (kubectl port-forward): containerd dials 127.0.0.1:80 in the
            // pod's network namespace on the host, which for carapace is carried into the VM.
            let forwarded = c.port_forward(&sid, 80, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(30));
            assert!(
                forwarded.as_ref().is_ok_and(|r| r.contains(&want)),
                "{handler}: GET / through PortForward: {forwarded:?}\n{}",
                c.log()
            );
            // Mount propagation from the host (HostToContainer): what a VM cannot carry,
            // refused by name at CreateContainer (runc's depends on the host's own mounts).
            if *handler == "carapace" {
                // containerd itself wants the source on a shared or slave mount.
                let source = c.dir().join("propagated");
                std::fs::create_dir_all(&source).unwrap();
                let mount = |args: &[&str]| {
                    let st = std::process::Command::new("mount").args(args).arg(&source).status().unwrap();
                    assert!(st.success(), "mount {args:?}");
                };
                mount(&["--bind", source.to_str().unwrap()]);
                mount(&["--make-shared"]);
                let mut config = c.container_config("propagated", &["true"]);
                config.mounts.push(cri::Mount {
                    container_path: "/data".into(),
                    host_path: source.display().to_string(),
                    propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                    ..Default::default()
                });
                let err = c.start_container(&sid, &pod, config).expect_err("carapace refuses HostToContainer propagation");
                let _ = std::process::Command::new("umount").arg(&source).status();
                assert!(err.message().contains("HostToContainer"), "{err}");
            }
            c.remove_pod(&sid);
        }

        // Host namespaces: runc shares them; carapace refuses them by name at RunPodSandbox.
        for (mode, named) in [("network", "network"), ("pid", "pid"), ("ipc", "ipc")] {
            let mut pod = c.pod_config(&format!("host-{mode}"));
            if mode == "network" {
                // A kubelet leaves a host-network pod's hostname to the node's.
                pod.hostname.clear();
            }
            let ns = pod_namespaces(&mut pod);
            match mode {
                "network" => ns.network = cri::NamespaceMode::Node as i32,
                "pid" => ns.pid = cri::NamespaceMode::Node as i32,
                _ => ns.ipc = cri::NamespaceMode::Node as i32,
            }
            let sid = run_pod(&c, "runc", &pod);
            c.remove_pod(&sid);
            let refused = c.run_pod("carapace", &pod);
            let err = refused.expect_err("carapace refuses a pod in a host namespace");
            assert!(
                err.message().contains("host") && err.message().contains(named),
                "host {mode}: {err}"
            );
        }
        c.assert_nothing_left();
        drop(c);
    }
}
