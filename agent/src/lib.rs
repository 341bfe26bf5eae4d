//! carapace-agent's library: what the agent's request handlers check and rewrite before they
//! act, kept apart from the binary so its fuzz target reaches it: the error type and its ttrpc
//! codes (`error`), the OCI spec, process and resources parsed and the spec rewritten for the
//! guest (`spec`), and, with the `fuzzing` feature (and in tests), the fuzz target's body
//! (`fuzz`). The binary (`main.rs`) holds the rest: init, the service, containers, network.

pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod spec;
