//! Which process of a container a request names: containerd's exec id, whose empty string
//! means the container's own (init) process, as a type of the shim's own. containerd's and
//! the agent's messages keep the string; [`ExecId::from_wire`] and [`ExecId::wire`] convert
//! at those edges.

use std::fmt;

/// A process of a container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExecId {
    /// The container's own process (the empty exec id on the wire).
    Init,
    /// A process added by Exec, by its exec id (never empty).
    Exec(String),
}

impl ExecId {
    /// The process a message's exec id names: none (empty) is the init process.
    pub fn from_wire(exec_id: &str) -> Self {
        if exec_id.is_empty() {
            Self::Init
        } else {
            Self::Exec(exec_id.to_string())
        }
    }

    /// The exec id as messages carry it: empty for the init process.
    pub fn wire(&self) -> &str {
        match self {
            Self::Init => "",
            Self::Exec(id) => id,
        }
    }
}

/// The wire form, as the shim's log lines and messages have always shown it (`c1/` for the
/// init process of `c1`, `c1/e1` for an exec).
impl fmt::Display for ExecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_exec_id_is_the_init_process_both_ways() {
        assert_eq!(ExecId::from_wire(""), ExecId::Init);
        assert_eq!(ExecId::Init.wire(), "");
        let e = ExecId::from_wire("e1");
        assert_eq!(e, ExecId::Exec("e1".into()));
        assert_eq!(e.wire(), "e1");
        assert_eq!(format!("c1/{}", ExecId::Init), "c1/");
        assert_eq!(format!("c1/{e}"), "c1/e1");
    }
}
