//! Generates the protobuf messages and ttrpc client/server code for `protos/*.proto` into
//! OUT_DIR with the pure-Rust parser (no `protoc` needed); `src/generated/mod.rs` includes it.

use std::fs;
use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: &[&str] = &["protos/types.proto", "protos/agent.proto"];

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Codegen::new()
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().generate_accessors(true))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .out_dir(&out)
        .run()
        .expect("generating the ttrpc code from protos/ failed");

    // `include!` rejects inner attributes and inner doc comments
    // (rust-lang/rust#18810), so drop those lines from every generated file; the
    // including module carries the `#![allow(...)]` instead.
    for entry in fs::read_dir(&out).expect("OUT_DIR is readable") {
        let path = entry.expect("OUT_DIR entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).expect("generated file is UTF-8");
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
                .collect();
            fs::write(&path, kept.join("\n")).expect("OUT_DIR is writable");
        }
    }
}
