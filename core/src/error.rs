//! Config errors: each names the config path that is wrong and what is wrong with it.

use core::fmt;

/// One problem in a config, at one path (`rollouts.checkout.versions[1].weight`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where in the config: dotted object keys and `[i]` array indexes; empty for the root.
    pub path: String,
    /// What is wrong there.
    pub kind: ErrorKind,
}

/// What is wrong at a config path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The bytes are not JSON.
    Syntax {
        /// The JSON reader's description of the problem (serde_json's wording).
        message: String,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
    },
    /// A field that the config format does not have; usually a typo.
    UnknownField {
        /// The fields that are allowed at this place.
        expected: &'static [&'static str],
    },
    /// A required field is absent.
    MissingField,
    /// The value has the wrong JSON type.
    WrongType {
        /// What was expected, such as "a string".
        expected: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
    /// A number outside its allowed range.
    OutOfRange {
        /// The allowed range, in words.
        expected: &'static str,
        /// The value found, as written.
        found: String,
    },
    /// A name (rollout, version, flag, variant) with characters or a length that is not allowed.
    BadName {
        /// The offending name.
        name: String,
    },
    /// A header or cookie name that cannot appear in HTTP.
    BadHeaderName {
        /// The offending name.
        name: String,
    },
    /// The same name or value appears twice where it must be unique.
    Duplicate {
        /// The repeated name or value.
        name: String,
    },
    /// A list that must have at least one entry is empty.
    Empty,
    /// Every entry of a weighted list has weight 0, so none could be chosen.
    AllWeightsZero,
    /// A reference to a version or variant that is not declared.
    UnknownReference {
        /// The name referred to.
        name: String,
        /// What kind of thing was looked for, such as "version".
        what: &'static str,
    },
    /// A key or attribute source not in one of the allowed forms.
    BadSource {
        /// The source as written.
        source: String,
        /// The forms allowed at this place.
        allowed: &'static str,
    },
    /// A host name that is not lowercase letters, digits, '-' and '.' (no port).
    BadHost {
        /// The host as written.
        host: String,
    },
    /// A comparison operator that does not exist.
    UnknownOperator {
        /// The operator as written.
        op: String,
        /// The operators that exist.
        expected: &'static [&'static str],
    },
    /// A value that does not parse as what its operator compares.
    BadOperand {
        /// What the operator needs, such as "a semantic version like 1.2.3".
        expected: &'static str,
        /// The value found.
        found: String,
    },
    /// Two rollouts that would both claim the same requests.
    OverlappingMatch {
        /// The other rollout.
        other: String,
    },
    /// A field that cannot be given together with another one.
    Conflict {
        /// The other field, or what it does.
        other: &'static str,
    },
    /// A list with the wrong number of entries.
    WrongCount {
        /// How many are needed, in words.
        expected: &'static str,
        /// How many there are.
        found: usize,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.kind)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Syntax {
                message,
                line,
                column,
            } => {
                write!(
                    f,
                    "not valid JSON at line {line} column {column}: {message}"
                )
            }
            ErrorKind::UnknownField { expected } => {
                write!(f, "unknown field, expected one of: {}", expected.join(", "))
            }
            ErrorKind::MissingField => write!(f, "missing required field"),
            ErrorKind::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            ErrorKind::OutOfRange { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            ErrorKind::BadName { name } => write!(
                f,
                "name {name:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'"
            ),
            ErrorKind::BadHeaderName { name } => {
                write!(f, "{name:?} is not a valid lowercase header or cookie name")
            }
            ErrorKind::Duplicate { name } => write!(f, "{name:?} appears more than once"),
            ErrorKind::Empty => write!(f, "must not be empty"),
            ErrorKind::AllWeightsZero => {
                write!(f, "all weights are 0, at least one needs a weight above 0")
            }
            ErrorKind::UnknownReference { name, what } => write!(f, "no {what} named {name:?}"),
            ErrorKind::BadSource { source, allowed } => {
                write!(f, "{source:?} is not a source, expected {allowed}")
            }
            ErrorKind::BadHost { host } => write!(
                f,
                "{host:?} is not a host name (lowercase letters, digits, '-' and '.', no port)"
            ),
            ErrorKind::UnknownOperator { op, expected } => write!(
                f,
                "unknown operator {op:?}, expected one of: {}",
                expected.join(", ")
            ),
            ErrorKind::BadOperand { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            ErrorKind::OverlappingMatch { other } => write!(
                f,
                "matches the same requests as rollout {other:?} (same hosts and path_prefix)"
            ),
            ErrorKind::Conflict { other } => write!(f, "cannot be given together with {other}"),
            ErrorKind::WrongCount { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every error found in one config, in the order the validator visits them; never empty
/// when it comes from the validator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    pub(crate) fn new(errors: Vec<ConfigError>) -> ConfigErrors {
        ConfigErrors(errors)
    }

    /// The errors, in the order the validator found them.
    pub fn iter(&self) -> core::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One line per error, `prefix` followed by the error (`path: message`), for hosts that
    /// log each error on its own line.
    pub fn lines<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = String> + 'a {
        self.0.iter().map(move |error| format!("{prefix}{error}"))
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = core::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::{ConfigError, ConfigErrors, ErrorKind};

    #[test]
    fn lines_prefix_every_error_and_keep_the_order() {
        let errors = ConfigErrors::new(vec![
            ConfigError {
                path: "rollouts.r.versions".to_owned(),
                kind: ErrorKind::Empty,
            },
            ConfigError {
                path: String::new(),
                kind: ErrorKind::MissingField,
            },
        ]);
        let lines: Vec<String> = errors.lines("rejected: ").collect();
        assert_eq!(
            lines,
            [
                "rejected: rollouts.r.versions: must not be empty",
                "rejected: (root): missing required field",
            ]
        );
        assert_eq!((errors.len(), errors.is_empty()), (2, false));
        assert_eq!((&errors).into_iter().count(), errors.iter().count());
    }
}
