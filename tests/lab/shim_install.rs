//! `make install` gives a working runtime: the tree it installed (tests/lab/test runs
//! `make install PROFILE=debug DESTDIR=...` on the host) copied into the lab's root, then
//! containerd with its default PATH and the shim with its default config path runs a
//! container in a microVM, with nothing from the build tree named anywhere.

use std::path::Path;
use std::process::Command;

use carapace_tests::artifacts::{busybox_image, BUSYBOX_IMAGE};
use carapace_tests::carapace::RUNTIME;
use carapace_tests::containerd::Containerd;
use carapace_tests::lab_test;

lab_test! {
    fn make_install_gives_a_working_runtime() {
        let Some(root) = std::env::var_os("CARAPACE_INSTALL_ROOT") else {
            panic!("CARAPACE_INSTALL_ROOT is not set: run through tests/lab/test, which runs make install");
        };
        let root = Path::new(&root);
        for f in [
            "usr/local/bin/carapace-vmm",
            "usr/local/bin/containerd-shim-carapace-v2",
            "usr/local/share/carapace/vmlinux",
            "usr/local/share/carapace/initramfs.img",
            "etc/carapace/config.toml",
            "etc/containerd/config.toml",
        ] {
            assert!(root.join(f).is_file(), "make install put {f} in place");
        }
        let stanza = std::fs::read_to_string(root.join("etc/containerd/config.toml")).unwrap_or_default();
        assert!(stanza.contains("runtime_type = \"io.containerd.carapace.v2\""), "the CRI runtime stanza: {stanza}");

        // The lab's root is a throwaway overlay: install there for real.
        let status = Command::new("cp").arg("-a").arg(format!("{}/.", root.display())).arg("/").status().expect("run cp");
        assert!(status.success(), "copying the installed tree into /");
        let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        let c = Containerd::start_with_env(&[("PATH", path.into())]);
        c.import(&busybox_image());
        let out = c.ctr_output(["run", "--rm", "--runtime", RUNTIME, BUSYBOX_IMAGE, "inst1", "sh", "-c", "echo installed; grep -c ^processor /proc/cpuinfo"]);
        assert!(out.status.success(), "{}", c.explain("ctr run with the installed runtime", &out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "installed\n1\n", "{}", c.explain("output", &out));
    }
}
