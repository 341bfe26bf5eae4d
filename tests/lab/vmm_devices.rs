//! carapace-vmm's virtio devices seen from a real guest: vsock both ways through the hybrid
//! Unix-socket backend, a file-backed block device read and written (and a read-only one
//! refused, one held to its rate limit), a tap-backed network device pinging the lab.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use carapace_tests::artifacts::{guest_kernel, test_initramfs};
use carapace_tests::lab_test;
use carapace_tests::vm::{carapace_vmm, Console};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet";

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("carapace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

lab_test! {
    fn vmm_vsock_carries_host_to_guest_and_guest_to_host_connections() {
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        let dir = scratch("vsock");
        let uds = dir.join("v.sock");

        // Host to guest: the guest echoes on port 5000; the host connects through the socket.
        let mut cmd = carapace_vmm(&kernel, &initrd, &format!("{CMDLINE} carapace.test=vsock-echo"), 1, 128);
        cmd.arg("--vsock").arg(format!("3,{}", uds.display()));
        let mut guest = Console::spawn(&mut cmd);
        guest.wait_for_line("vsock-probe: listening on port 5000", Duration::from_secs(120));
        let mut conn = UnixStream::connect(&uds).expect("connect to the vsock socket");
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        conn.write_all(b"CONNECT 5000\n").unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        assert!(ok.starts_with("OK "), "expected OK <port>, got {ok:?}");
        // A payload bigger than one virtio buffer and the guest's initial credit of a read.
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let mut c = conn.try_clone().unwrap();
            let p = payload.clone();
            std::thread::spawn(move || {
                c.write_all(&p).unwrap();
                c.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let mut echoed = Vec::new();
        reader.read_to_end(&mut echoed).unwrap();
        writer.join().unwrap();
        assert_eq!(echoed.len(), payload.len(), "echo length");
        assert!(echoed == payload, "the echoed bytes differ");
        guest.wait_for_line("vsock-probe: echoed 300000 bytes", Duration::from_secs(30));
        let status = guest.wait_exit(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "{}", guest.text());
        assert!(!uds.exists(), "the vsock socket was left behind");

        // Guest to host: the guest connects to CID 2 port 6000, which is <socket>_6000.
        let listener = UnixListener::bind(format!("{}_6000", uds.display())).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
            (&s).write_all(b"hello-from-the-host\n").unwrap();
            line
        });
        let mut cmd = carapace_vmm(&kernel, &initrd, &format!("{CMDLINE} carapace.test=vsock-send"), 1, 128);
        cmd.arg("--vsock").arg(format!("3,{}", uds.display()));
        let mut guest = Console::spawn(&mut cmd);
        guest.wait_for_line("vsock-probe: reply: hello-from-the-host", Duration::from_secs(120));
        assert_eq!(server.join().unwrap().trim(), "hello-from-the-guest");
        let status = guest.wait_exit(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "{}", guest.text());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

lab_test! {
    fn vmm_block_device_is_read_and_written_by_the_guest() {
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        let dir = scratch("blk");
        let disk = dir.join("disk.img");
        let mut image = vec![0u8; 8 << 20];
        image[..24].copy_from_slice(b"carapace-blk-from-host!!");
        std::fs::write(&disk, &image).unwrap();
        let ro = dir.join("ro.img");
        std::fs::write(&ro, vec![7u8; 1 << 20]).unwrap();
        let mut cmd = carapace_vmm(&kernel, &initrd, &format!("{CMDLINE} carapace.test=blk"), 1, 128);
        cmd.arg("--block").arg(&disk).arg("--block").arg(format!("{},ro", ro.display()));
        let mut guest = Console::spawn(&mut cmd);
        guest.wait_for_line("carapace-test: done", Duration::from_secs(120));
        let status = guest.wait_exit(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "{}", guest.text());
        let text = guest.text();
        assert!(text.contains("blk: read: carapace-blk-from-host!!"), "{text}");
        assert!(text.contains("blk: write ok"), "{text}");
        assert!(text.contains("blk: size 16384 sectors"), "{text}");
        assert!(text.contains("blk: ro write refused"), "{text}");
        assert!(text.contains("blk: ro flag 1"), "{text}");
        let after = std::fs::read(&disk).unwrap();
        assert_eq!(&after[4096..4096 + 20], b"written-by-the-guest");
        assert_eq!(std::fs::read(&ro).unwrap(), vec![7u8; 1 << 20], "the read-only disk changed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

lab_test! {
    fn vmm_block_rate_limit_holds_within_ten_percent() {
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        let dir = scratch("blk-rate");
        let (limited, free) = (dir.join("limited.img"), dir.join("free.img"));
        std::fs::write(&limited, vec![1u8; 8 << 20]).unwrap();
        std::fs::write(&free, vec![2u8; 8 << 20]).unwrap();
        const LIMIT: f64 = 1048576.0;
        let mut cmd = carapace_vmm(&kernel, &initrd, &format!("{CMDLINE} carapace.test=blk-rate"), 1, 128);
        cmd.arg("--block").arg(format!("{},bps={}", limited.display(), LIMIT as u64));
        cmd.arg("--block").arg(&free);
        let mut guest = Console::spawn(&mut cmd);
        guest.wait_for_line("carapace-test: done", Duration::from_secs(180));
        let status = guest.wait_exit(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "{}", guest.text());
        let text = guest.text();
        let ms = |disk: &str| -> f64 {
            text.lines()
                .find_map(|l| l.split(&format!("blk-rate: {disk} ")).nth(1))
                .and_then(|r| r.trim_end_matches(" ms").trim().parse().ok())
                .unwrap_or_else(|| panic!("no figure for {disk}:\n{text}"))
        };
        let (limited_ms, free_ms) = (ms("vda"), ms("vdb"));
        let rate = 4.0 * 1048576.0 / (limited_ms / 1000.0);
        println!(
            "lab figure: 4 MiB read from a disk limited to 1 MiB/s at {:.3} MiB/s ({limited_ms:.0} ms); unlimited {:.1} MiB/s ({free_ms:.0} ms)",
            rate / 1048576.0,
            4000.0 / free_ms.max(1.0)
        );
        assert!((0.9 * LIMIT..=1.1 * LIMIT).contains(&rate), "{rate} B/s against {LIMIT}");
        assert!(free_ms < limited_ms / 2.0, "the unlimited disk is not held back");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

lab_test! {
    fn vmm_net_device_pings_the_lab_through_a_tap() {
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        sh("ip tuntap add dev cptap0 mode tap && ip addr add 10.0.77.1/24 dev cptap0 && ip link set cptap0 up");
        let mut cmd = carapace_vmm(&kernel, &initrd, &format!("{CMDLINE} carapace.test=net"), 1, 128);
        cmd.args(["--net", "cptap0,mac=02:00:00:00:77:02"]);
        let mut guest = Console::spawn(&mut cmd);
        guest.wait_for_line("net: ready", Duration::from_secs(120));
        assert!(guest.text().contains("3 packets transmitted, 3 packets received"), "guest to lab:\n{}", guest.text());
        let ping = sh("busybox ping -c 2 -W 5 10.0.77.2");
        assert!(ping.contains("2 received") || ping.contains("2 packets received"), "lab to guest: {ping}");
        let neigh = sh("ip neigh show dev cptap0");
        assert!(neigh.contains("02:00:00:00:77:02"), "the guest's MAC is not the configured one: {neigh}");
        let status = guest.wait_exit(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "{}", guest.text());
        sh("ip link del cptap0");
    }
}

/// Receives `total` bytes on one connection to `listener` and returns the time from the
/// `skip`th byte to the last, then closes the connection (which ends the sender's nc).
fn time_receive(
    listener: &std::net::TcpListener,
    skip: usize,
    total: usize,
    within: Duration,
) -> Duration {
    listener.set_nonblocking(true).unwrap();
    let mut conn = carapace_tests::lab::wait_for(within, || listener.accept().ok().map(|(c, _)| c))
        .expect("the guest did not connect");
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(within)).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    let mut first = None;
    while got < total {
        let n = conn
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("after {got} bytes: {e}"));
        assert!(n > 0, "the sender closed after {got} of {total} bytes");
        got += n;
        if got >= skip {
            first.get_or_insert_with(std::time::Instant::now);
        }
    }
    first.unwrap().elapsed()
}

lab_test! {
    fn vmm_net_transmit_rate_limit_holds_within_ten_percent() {
        // The same 1 MiB sent by the guest over TCP through the tap, first without a limit,
        // then with the device's transmit direction limited to a quarter of the frame rate
        // the lab just carried (its TCG speed varies between machines and days: 600 KiB/s of
        // payload once, 345 KiB/s another day), at least 64 KiB/s.
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        const TOTAL: usize = 1 << 20;
        // Timed from the 256th KiB: past TCP's slow start and the bucket's first burst.
        const SKIP: usize = 256 << 10;
        sh("ip tuntap add dev cptap1 mode tap && ip addr add 10.0.77.1/24 dev cptap1 && ip link set cptap1 up");
        let listener = std::net::TcpListener::bind("10.0.77.1:5001").unwrap();
        let run = |net: &str| -> Duration {
            let mut cmd = carapace_vmm(&kernel, &initrd, &format!("{CMDLINE} carapace.test=net-rate"), 1, 128);
            cmd.args(["--net", net]);
            let mut guest = Console::spawn(&mut cmd);
            let took = time_receive(&listener, SKIP, TOTAL, Duration::from_secs(120));
            guest.wait_for_line("net-rate: sent", Duration::from_secs(60));
            let status = guest.wait_exit(Duration::from_secs(60));
            assert_eq!(status.code(), Some(0), "{}", guest.text());
            took
        };
        // The limit counts the frames the guest sends, the test the TCP payload: each
        // 1448-byte segment (MSS at MTU 1500 with timestamps) goes in a 1514-byte frame
        // (TCP 32, IP 20, Ethernet 14).
        const FRAME_PER_PAYLOAD: f64 = 1514.0 / 1448.0;
        let free = run("cptap1,mac=02:00:00:00:77:03");
        let free_rate = (TOTAL - SKIP) as f64 / free.as_secs_f64() * FRAME_PER_PAYLOAD;
        let limit = (free_rate / 4.0).max(65536.0).round();
        let limited = run(&format!("cptap1,mac=02:00:00:00:77:03,tx_bps={}", limit as u64));
        sh("ip link del cptap1");
        let payload_rate = (TOTAL - SKIP) as f64 / limited.as_secs_f64();
        let rate = payload_rate * FRAME_PER_PAYLOAD;
        println!(
            "lab figure: the last 768 KiB of 1 MiB sent by the guest through a tap: unlimited frames at {:.1} KiB/s ({:.0} ms); limited to {:.1} KiB/s: frames at {:.1} KiB/s (payload {:.1} KiB/s, {:.0} ms)",
            free_rate / 1024.0,
            free.as_secs_f64() * 1000.0,
            limit / 1024.0,
            rate / 1024.0,
            payload_rate / 1024.0,
            limited.as_secs_f64() * 1000.0,
        );
        assert!(free_rate > 2.0 * limit, "the lab carried only {free_rate:.0} B/s unlimited: too slow to tell a 64 KiB/s limit");
        assert!((0.9 * limit..=1.1 * limit).contains(&rate), "{rate} B/s against {limit}");
    }
}
