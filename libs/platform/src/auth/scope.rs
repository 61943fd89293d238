//! Scopes an API key can hold, with their wire names.

use std::fmt;
use std::str::FromStr;

/// What an API key may do. [`Scope::Admin`] implies every other scope (see [`Scope::grants`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `leads:write`: capture, import and return leads, record activities and inbound messages.
    LeadsWrite,
    /// `leads:read`: read leads, messages and analytics; personal data stays masked.
    LeadsRead,
    /// `pii:read`: see personal data unmasked where an RPC returns it.
    PiiRead,
    /// `admin`: manage sources, keys, merges and erasure; implies every other scope.
    Admin,
}

impl Scope {
    /// Every scope, in wire-name order of the table in reliability §1.6.
    pub const ALL: [Scope; 4] = [
        Scope::LeadsWrite,
        Scope::LeadsRead,
        Scope::PiiRead,
        Scope::Admin,
    ];

    /// Returns the wire name, e.g. `leads:write`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::LeadsWrite => "leads:write",
            Scope::LeadsRead => "leads:read",
            Scope::PiiRead => "pii:read",
            Scope::Admin => "admin",
        }
    }

    /// Returns whether holding `self` allows what `needed` guards: the same scope, or `admin`
    /// for anything.
    pub fn grants(self, needed: Scope) -> bool {
        self == needed || self == Scope::Admin
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one of [`Scope::ALL`]'s wire names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}: expected leads:write, leads:read, pii:read or admin")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    /// Parses a wire name exactly (case-sensitive, no surrounding spaces).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == name)
            .ok_or_else(|| UnknownScope(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        let names: Vec<String> = Scope::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["leads:write", "leads:read", "pii:read", "admin"]);
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
    }

    #[test]
    fn unknown_names_are_refused() {
        for name in ["", "Admin", "leads", "leads:*", " admin", "pii:write"] {
            assert_eq!(
                name.parse::<Scope>(),
                Err(UnknownScope(name.to_owned())),
                "{name:?}"
            );
        }
    }

    #[test]
    fn admin_implies_every_scope_and_nothing_else_implies_another() {
        for needed in Scope::ALL {
            assert!(Scope::Admin.grants(needed), "admin grants {needed}");
            for held in Scope::ALL {
                let expected = held == needed || held == Scope::Admin;
                assert_eq!(held.grants(needed), expected, "{held} grants {needed}");
            }
        }
    }
}
