//! Unit tests of the symlink-proof host path work: planted links are refused, files are
//! never truncated, the pod's export is read-only with later mounts appearing in it keeping
//! their own flags, and binds get nosuid/nodev (and ro, recursively) before they appear.
//! They mount, so they run as root (as `make test` does) and say so when they cannot.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::*;

fn scratch(name: &str) -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {name}: mounting needs root");
        return None;
    }
    let d = std::env::temp_dir().join(format!("carapace-hostfs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Some(d)
}

/// Unmounts everything under `d` (deepest first) and removes it.
fn clean(d: &Path) {
    for _ in 0..4 {
        for m in crate::mounts::mounts_under(d) {
            let _ = unmount(&m);
        }
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_planted_symlink_is_never_followed() {
    let Some(d) = scratch("symlink") else { return };
    let victim = d.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), "precious").unwrap();
    let root = d.join("root");
    std::fs::create_dir(&root).unwrap();
    symlink(&victim, root.join("c1")).unwrap();
    symlink(victim.join("keep"), root.join("file")).unwrap();
    let dir = Dir::open(&root).unwrap();

    let e = dir.mkdir_all(Path::new("c1/rootfs"), 0o755).unwrap_err();
    assert!(e.to_string().contains("without following links"), "{e}");
    assert!(!victim.join("rootfs").exists());
    assert!(dir.touch(Path::new("file")).is_err());
    assert!(dir.touch(Path::new("c1/x")).is_err());
    assert_eq!(
        std::fs::read_to_string(victim.join("keep")).unwrap(),
        "precious"
    );
    assert!(dir.mkdir_all(Path::new("../escape"), 0o755).is_err());
    assert!(!d.join("escape").exists());
    clean(&d);
}

#[test]
fn touch_keeps_what_a_file_holds() {
    let Some(d) = scratch("touch") else { return };
    let dir = Dir::open(&d).unwrap();
    dir.touch(Path::new("a/b/f")).unwrap();
    std::fs::write(d.join("a/b/f"), "data").unwrap();
    dir.touch(Path::new("a/b/f")).unwrap();
    assert_eq!(std::fs::read_to_string(d.join("a/b/f")).unwrap(), "data");
    clean(&d);
}

#[test]
fn the_export_is_read_only_and_later_mounts_appear_in_it_with_their_flags() {
    let Some(d) = scratch("share") else { return };
    let pod = Dir::open(&d).unwrap();
    make_share(&pod, "mnt", "shared").unwrap();
    let mnt = Dir::open(&d.join("mnt")).unwrap();
    let shared = d.join("shared");
    assert_eq!(mount_flags(&shared).unwrap(), (true, true, true));
    // Nothing can be made above a container's own mounts through the export.
    let e = std::fs::create_dir(shared.join("c2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));

    let src = d.join("volume");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), "host").unwrap();
    bind(
        &mnt,
        &src,
        Path::new("c1/mounts/0"),
        BindFlags {
            read_only: true,
            no_exec: false,
        },
    )
    .unwrap();
    let rw = d.join("rw");
    std::fs::create_dir(&rw).unwrap();
    bind(&mnt, &rw, Path::new("c1/mounts/1"), BindFlags::default()).unwrap();

    let ro_view = shared.join("c1/mounts/0");
    assert_eq!(std::fs::read_to_string(ro_view.join("f")).unwrap(), "host");
    assert_eq!(mount_flags(&ro_view).unwrap(), (true, true, true));
    let e = std::fs::write(ro_view.join("f"), "guest").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let rw_view = shared.join("c1/mounts/1");
    assert_eq!(mount_flags(&rw_view).unwrap(), (false, true, true));
    std::fs::write(rw_view.join("g"), "guest").unwrap();
    assert_eq!(std::fs::read_to_string(rw.join("g")).unwrap(), "guest");
    clean(&d);
}

#[test]
fn a_read_only_bind_is_read_only_all_the_way_down() {
    let Some(d) = scratch("rec") else { return };
    let src = d.join("src");
    let sub = src.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    rustix::mount::mount(
        "tmpfs",
        &sub,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .unwrap();
    std::fs::write(sub.join("f"), "x").unwrap();
    let target = Dir::open(&d).unwrap();
    bind(
        &target,
        &src,
        Path::new("t"),
        BindFlags {
            read_only: true,
            no_exec: true,
        },
    )
    .unwrap();
    let e = std::fs::write(d.join("t/sub/f"), "y").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(mount_flags(&d.join("t/sub")).unwrap(), (true, true, true));
    // The source itself is unchanged.
    std::fs::write(sub.join("f"), "y").unwrap();
    clean(&d);
}

#[test]
fn a_file_bind_lands_on_a_fresh_file() {
    let Some(d) = scratch("filebind") else { return };
    std::fs::write(d.join("resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
    std::fs::create_dir(d.join("root")).unwrap();
    let root = Dir::open(&d.join("root")).unwrap();
    bind(
        &root,
        &d.join("resolv.conf"),
        Path::new("c1/mounts/2"),
        BindFlags::default(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(d.join("root/c1/mounts/2")).unwrap(),
        "nameserver 10.0.0.1\n"
    );
    clean(&d);
}
