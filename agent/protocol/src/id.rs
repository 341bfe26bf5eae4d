//! The one rule for the ids that cross from containerd through the shim to the agent
//! (container, exec and sandbox ids): both sides check them with [`check`] before an id
//! names a host path, a guest path or a cgroup.

use std::fmt;

/// Longest id accepted (a CRI id is 64 hex digits).
pub const MAX_ID_LEN: usize = 64;

/// Why an id was refused; its message names the id and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId {
    /// What the id names ("container", "exec", "sandbox", ...).
    pub kind: String,
    /// The refused id.
    pub id: String,
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} id {:?} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9_.-], not starting with '.'",
            self.kind, self.id
        )
    }
}

impl std::error::Error for InvalidId {}

/// Checks an id: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with a dot (so never `.`, `..`,
/// a hidden name, a path separator or an empty path component).
pub fn check(kind: &str, id: &str) -> Result<(), InvalidId> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(InvalidId {
            kind: kind.to_string(),
            id: id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for good in ["abc-1_2.x", "a", &"f".repeat(64), "a..b"] {
            assert!(check("container", good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../../tmp/victim",
            "a b",
            "a\0b",
            "é",
            &"x".repeat(65),
        ] {
            let e = check("sandbox", bad).unwrap_err();
            assert!(e.to_string().starts_with("sandbox id "), "{e}");
        }
    }
}
