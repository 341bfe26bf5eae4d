//! carapace-vmm's virtio-fs device seen from a real guest: the guest mounts two shares and
//! runs file operations on them (tests/guest/init, `carapace.test=fs`), 100 MiB files cross
//! both ways with the same checksum, a host change is seen by the running guest, and every
//! escape attempt from the guest fails to reach host files outside the share.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use carapace_tests::artifacts::{guest_kernel, test_initramfs};
use carapace_tests::lab_test;
use carapace_tests::vm::{carapace_vmm, Console};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet";
const SECRET: &str = "HOST-SECRET-OUTSIDE-THE-SHARE";

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("carapace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// md5sum of a file on the host (md5 rather than sha256: the lab's CPU is emulated, and the
/// guest's busybox md5sum is several times faster than its sha256sum).
fn md5(path: &Path) -> String {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// 100 MiB that no two MiB of are alike (a bug that drops, repeats or reorders whole requests
/// changes the checksum), made fast: one pseudo-random MiB, each copy stamped with its index.
fn write_big(path: &Path) {
    use std::io::Write;
    let mut block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..100u64 {
        block[..8].copy_from_slice(&i.to_le_bytes());
        block[(1 << 20) - 8..].copy_from_slice(&(!i).to_le_bytes());
        f.write_all(&block).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

/// The text after `prefix` on the console line that starts with it.
fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}; console:\n{text}"))
        .trim()
}

lab_test! {
    fn vmm_fs_share_serves_file_operations_and_keeps_the_guest_inside() {
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        let dir = scratch("fs");
        let share = dir.join("share");
        let cached = dir.join("cached");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::create_dir_all(&cached).unwrap();
        std::fs::write(dir.join("outside-secret"), SECRET).unwrap();
        std::fs::write(share.join("host.txt"), "written-by-the-host\n").unwrap();
        std::fs::write(share.join("changing.txt"), "v1").unwrap();
        std::fs::write(cached.join("m.bin"), vec![b'.'; 4096]).unwrap();
        std::os::unix::fs::symlink(dir.join("outside-secret"), share.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", share.join("passwd-link")).unwrap();
        std::os::unix::fs::symlink("../..", share.join("up-link")).unwrap();
        // 100 MiB written by the host for the guest to checksum.
        write_big(&share.join("host-big.bin"));
        let host_big = md5(&share.join("host-big.bin"));

        // 512 MiB: the guest holds its 100 MiB file in RAM before writing it to the share.
        let mut cmd = carapace_vmm(&kernel, &initrd, &format!("{CMDLINE} carapace.test=fs"), 2, 512);
        cmd.arg("--fs").arg(format!("carapace,{}", share.display()));
        cmd.arg("--fs").arg(format!("cached,{},cache=auto", cached.display()));
        let mut guest = Console::spawn(&mut cmd);
        // Times are printed for the record. In the lab (debug VMM, emulated CPU) the file
        // operations and the guest's 100 MiB took 21 s and the host's 100 MiB 10 s, the whole
        // test 46 s; before the device negotiated 1 MiB requests at INIT, 4 KiB writes made
        // the same work take many minutes.
        let t0 = guest.wait_for_line("fs: mounted cached", Duration::from_secs(60));
        let t1 = guest.wait_for_line("fs: guest file written", Duration::from_secs(240));
        let t2 = guest.wait_for_line("fs: waiting for host change", Duration::from_secs(120));
        println!("vmm_fs: file operations and guest's 100 MiB written {:.1} s, host's 100 MiB read {:.1} s",
            (t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
        std::fs::write(share.join("changing.txt"), "v2").unwrap();
        guest.wait_for_line("carapace-test: done", Duration::from_secs(120));
        let status = guest.wait_exit(Duration::from_secs(60));
        let text = guest.text().to_string();
        assert_eq!(status.code(), Some(0), "{text}");

        // File operations, each checked from the guest and where it matters on the host.
        assert!(text.contains("fs: mounted\n") && text.contains("fs: mounted cached"), "{text}");
        assert_eq!(line(&text, "fs: host file:"), "written-by-the-host");
        assert_eq!(line(&text, "fs: read back:"), "created-by-the-guest");
        assert_eq!(line(&text, "fs: lines after append:"), "2");
        assert_eq!(line(&text, "fs: renamed:"), "created-by-the-guest");
        assert!(!share.join("a.txt").exists());
        assert_eq!(std::fs::read_to_string(share.join("b.txt")).unwrap(), "created-by-the-guest\nappended\n");
        let listing = line(&text, "fs: readdir:");
        for name in ["b.txt", "d", "host.txt", "changing.txt"] {
            assert!(listing.split(' ').any(|n| n == name), "{name} missing from {listing}");
        }
        assert_eq!(line(&text, "fs: readdir nested:"), "f");
        assert!(share.join("d/e/f").is_file());
        assert_eq!(line(&text, "fs: chmod:"), "640");
        assert_eq!(line(&text, "fs: chown:"), "1234:5678");
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(share.join("b.txt")).unwrap();
            assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o640, 1234, 5678));
            assert_eq!(m.nlink(), 1, "the hard link was removed on the host too");
        }
        assert_eq!(line(&text, "fs: hard link count:"), "2");
        assert_eq!(line(&text, "fs: symlink:"), "b.txt -> created-by-the-guest");
        assert_eq!(std::fs::read_link(share.join("sym.txt")).unwrap(), PathBuf::from("b.txt"));
        assert_eq!(line(&text, "fs: user setxattr"), "ok");
        assert_eq!(line(&text, "fs: user getxattr"), "guest-xattr");
        assert!(line(&text, "fs: trusted setxattr").starts_with("failed"), "{text}");
        assert_eq!(line(&text, "fs: fsync"), "ok");
        assert_eq!(std::fs::read_to_string(share.join("synced.txt")).unwrap(), "fsynced-by-the-guest");
        assert_eq!(line(&text, "fs: unlinked; link count now"), "1");
        assert!(!share.join("hard.txt").exists());
        assert!(text.contains("fs: rmdir of a non-empty directory refused"), "{text}");
        // mmap: private mappings work on the cache=never share; shared writable ones need
        // cache=auto (the guest kernel refuses them on direct-I/O files).
        assert_eq!(line(&text, "fs: never mmap-private"), "written-by-the-host");
        assert_eq!(line(&text, "fs: never mmap failed:"), "No such device (os error 19)");
        assert_eq!(line(&text, "fs: cached mmap-shared"), "ok");
        assert_eq!(line(&text, "fs: cached read after mmap:"), "mapped-by-the-guest");
        assert_eq!(&std::fs::read(cached.join("m.bin")).unwrap()[..19], b"mapped-by-the-guest");

        // 100 MiB both ways.
        assert_eq!(line(&text, "fs: host-big"), host_big);
        let guest_big = share.join("guest-big.bin");
        assert_eq!(std::fs::metadata(&guest_big).unwrap().len(), 100 << 20);
        assert_eq!(line(&text, "fs: guest-big"), md5(&guest_big));

        // A host-side change while the guest ran.
        assert_eq!(line(&text, "fs: changing before:"), "v1");
        assert_eq!(line(&text, "fs: changing after:"), "v2");

        // Escapes: nothing of the host outside the share was read, listed or created.
        assert!(!text.contains(SECRET), "the guest read the host's secret:\n{text}");
        assert!(!text.contains("root:x:0:0"), "the guest read the host's /etc/passwd:\n{text}");
        for attempt in ["dotdot", "abs-link", "passwd-link", "hard link", "proc-fd", "proc-fd listing"] {
            assert_ne!(line(&text, &format!("fs: escape {attempt} status")), "0", "{attempt} succeeded:\n{text}");
        }
        let up = line(&text, "fs: escape up-link lists:");
        assert!(up.split(' ').any(|n| n == "init"), "../.. should be the guest's own root: {up}");
        for host_name in ["usr", "work", "etc"] {
            assert!(!up.split(' ').any(|n| n == host_name), "../.. listed the host's root: {up}");
        }
        let mut outside: Vec<String> = std::fs::read_dir(&dir).unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        outside.sort();
        assert_eq!(outside, ["cached", "outside-secret", "share"], "files appeared outside the share");
        assert_eq!(std::fs::read_to_string(dir.join("outside-secret")).unwrap(), SECRET);
        assert!(text.contains("fs: unmounted"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

lab_test! {
    fn vmm_fs_refuses_a_missing_share_and_dax() {
        let (kernel, initrd) = (guest_kernel(), test_initramfs());
        let dir = scratch("fs-config");
        let out = carapace_vmm(&kernel, &initrd, CMDLINE, 1, 128)
            .arg("--fs").arg(format!("carapace,{}", dir.join("missing").display()))
            .output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("fs[0].path"), "{err}");
        let config = dir.join("vm.json");
        std::fs::write(&config, format!(
            r#"{{"kernel": "{}", "fs": [{{"tag": "carapace", "path": "{}", "dax": true}}]}}"#,
            kernel.display(), dir.display())).unwrap();
        let out = Command::new(carapace_tests::artifacts::vmm_binary())
            .arg("--config").arg(&config).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("fs[0].dax"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
