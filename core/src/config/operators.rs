//! The comparison operators of attribute rules, each defined once: its name, the condition
//! field that carries its argument, how the argument is validated, and its line in the docs.
//! The validator, the unknown-operator error and [`OPERATORS`] all read [`OPERATOR_DEFS`].

use crate::json::{Object, Value};

use super::walk::Walk;
use crate::error::ErrorKind;
use crate::semver::Semver;

/// A validated comparison: what a condition checks the attribute against.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Equals(String),
    OneOf(Vec<String>),
    NotOneOf(Vec<String>),
    Prefix(String),
    Number(Cmp, f64),
    Semver(Cmp, Semver),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    pub(crate) fn holds(self, ordering: core::cmp::Ordering) -> bool {
        use core::cmp::Ordering::*;
        match self {
            Cmp::Eq => ordering == Equal,
            Cmp::Gt => ordering == Greater,
            Cmp::Gte => ordering != Less,
            Cmp::Lt => ordering == Less,
            Cmp::Lte => ordering != Greater,
        }
    }
}

/// Which condition field carries an operator's argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// `"value"`: one JSON value.
    Value,
    /// `"values"`: a list of strings.
    Values,
}

impl Operand {
    /// The name of the condition field.
    pub fn field(self) -> &'static str {
        match self {
            Operand::Value => "value",
            Operand::Values => "values",
        }
    }

    /// The other field, which a condition with this operand must not have.
    fn stray(self) -> &'static str {
        match self {
            Operand::Value => "values",
            Operand::Values => "value",
        }
    }

    /// Every field a condition with this operand may have.
    fn condition_fields(self) -> &'static [&'static str] {
        match self {
            Operand::Value => &["attribute", "op", "value"],
            Operand::Values => &["attribute", "op", "values"],
        }
    }
}

/// One rule operator, as the docs describe it and the validator accepts it.
#[derive(Debug, Clone, Copy)]
pub struct Operator {
    /// The name written in a condition's `"op"`.
    pub name: &'static str,
    /// The field that carries its argument.
    pub operand: Operand,
    /// What the argument is, in the words of the docs' operator table.
    pub takes: &'static str,
    /// When a condition holds, completing "holds when the attribute ...".
    pub holds_when: &'static str,
    /// Lowers the argument, reporting at the walk's path what is wrong with it.
    parse: fn(&mut Walk, &Value) -> Option<Op>,
}

const NUMBER: &str = "number";
const COMPARES_NUMBERS: &str = "parses as a finite number and compares so";
const VERSION: &str = "version string";
const COMPARES_VERSIONS: &str = "parses as a semantic version and compares by SemVer 2.0 \
    precedence (`2.10.0` > `2.3.0`, `1.0.0-rc.1` < `1.0.0`; a leading `v` and missing \
    minor/patch are accepted)";

const DEFS: [Operator; 13] = [
    Operator {
        name: "equals",
        operand: Operand::Value,
        takes: "string",
        holds_when: "equals the value, byte for byte",
        parse: |w, v| w.string(v).map(|s| Op::Equals(s.to_owned())),
    },
    Operator {
        name: "one_of",
        operand: Operand::Values,
        takes: "list of strings",
        holds_when: "equals one of them",
        parse: |w, v| Some(Op::OneOf(w.string_list(v))),
    },
    Operator {
        name: "not_one_of",
        operand: Operand::Values,
        takes: "list of strings",
        holds_when: "equals none of them",
        parse: |w, v| Some(Op::NotOneOf(w.string_list(v))),
    },
    Operator {
        name: "prefix",
        operand: Operand::Value,
        takes: "string",
        holds_when: "starts with the value",
        parse: |w, v| w.string(v).map(|s| Op::Prefix(s.to_owned())),
    },
    Operator {
        name: "gt",
        operand: Operand::Value,
        takes: NUMBER,
        holds_when: COMPARES_NUMBERS,
        parse: |w, v| number(w, v).map(|n| Op::Number(Cmp::Gt, n)),
    },
    Operator {
        name: "gte",
        operand: Operand::Value,
        takes: NUMBER,
        holds_when: COMPARES_NUMBERS,
        parse: |w, v| number(w, v).map(|n| Op::Number(Cmp::Gte, n)),
    },
    Operator {
        name: "lt",
        operand: Operand::Value,
        takes: NUMBER,
        holds_when: COMPARES_NUMBERS,
        parse: |w, v| number(w, v).map(|n| Op::Number(Cmp::Lt, n)),
    },
    Operator {
        name: "lte",
        operand: Operand::Value,
        takes: NUMBER,
        holds_when: COMPARES_NUMBERS,
        parse: |w, v| number(w, v).map(|n| Op::Number(Cmp::Lte, n)),
    },
    Operator {
        name: "semver_eq",
        operand: Operand::Value,
        takes: VERSION,
        holds_when: COMPARES_VERSIONS,
        parse: |w, v| semver(w, v).map(|s| Op::Semver(Cmp::Eq, s)),
    },
    Operator {
        name: "semver_gt",
        operand: Operand::Value,
        takes: VERSION,
        holds_when: COMPARES_VERSIONS,
        parse: |w, v| semver(w, v).map(|s| Op::Semver(Cmp::Gt, s)),
    },
    Operator {
        name: "semver_gte",
        operand: Operand::Value,
        takes: VERSION,
        holds_when: COMPARES_VERSIONS,
        parse: |w, v| semver(w, v).map(|s| Op::Semver(Cmp::Gte, s)),
    },
    Operator {
        name: "semver_lt",
        operand: Operand::Value,
        takes: VERSION,
        holds_when: COMPARES_VERSIONS,
        parse: |w, v| semver(w, v).map(|s| Op::Semver(Cmp::Lt, s)),
    },
    Operator {
        name: "semver_lte",
        operand: Operand::Value,
        takes: VERSION,
        holds_when: COMPARES_VERSIONS,
        parse: |w, v| semver(w, v).map(|s| Op::Semver(Cmp::Lte, s)),
    },
];

/// Every rule operator, in the order the docs list them.
pub const OPERATOR_DEFS: &[Operator] = &DEFS;

/// The names of the rule operators, in the order of [`OPERATOR_DEFS`].
pub const OPERATORS: &[&str] = &names(&DEFS);

/// Runs at compile time only, where an index out of range is a build error, not a panic.
#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation turns a bad index into a build error"
)]
const fn names<const N: usize>(defs: &[Operator; N]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = defs[i].name;
        i += 1;
    }
    out
}

impl Operator {
    /// The operator called `name`, if there is one.
    pub fn named(name: &str) -> Option<&'static Operator> {
        OPERATOR_DEFS.iter().find(|op| op.name == name)
    }

    /// Lowers the argument of a condition (the walk is at the condition), reporting a
    /// missing argument and the field of the other operand kind.
    pub(super) fn argument(&self, w: &mut Walk, condition: &Object) -> Option<Op> {
        let (field, stray) = (self.operand.field(), self.operand.stray());
        let report_stray = |w: &mut Walk| {
            if condition.contains_key(stray) {
                w.at_key(stray, |w| {
                    w.error(ErrorKind::UnknownField {
                        expected: self.operand.condition_fields(),
                    })
                });
            }
        };
        // The stray field is reported before a single value and after a list, so the error
        // lines keep the order they had before this table.
        if self.operand == Operand::Value {
            report_stray(w);
        }
        let op = w
            .required(condition, field)
            .and_then(|v| w.at_key(field, |w| (self.parse)(w, v)));
        if self.operand == Operand::Values {
            report_stray(w);
        }
        op
    }
}

fn number(w: &mut Walk, value: &Value) -> Option<f64> {
    let n = value.as_f64();
    if n.is_none() {
        w.error(ErrorKind::BadOperand {
            expected: "a number",
            found: value.to_string(),
        });
    }
    n
}

fn semver(w: &mut Walk, value: &Value) -> Option<Semver> {
    let text = w.string(value)?;
    let version = Semver::parse(text);
    if version.is_none() {
        w.error(ErrorKind::BadOperand {
            expected: "a semantic version like 1.2.3",
            found: format!("{text:?}"),
        });
    }
    version
}

#[cfg(test)]
mod tests {
    use super::{OPERATOR_DEFS, OPERATORS, Operator};

    /// The docs' operator table, one row per run of operators that read the same.
    fn markdown_rows() -> String {
        let mut rows: Vec<(Vec<&str>, &str, &str)> = Vec::new();
        for op in OPERATOR_DEFS {
            match rows.last_mut() {
                Some((names, takes, holds)) if *takes == op.takes && *holds == op.holds_when => {
                    names.push(op.name)
                }
                _ => rows.push((vec![op.name], op.takes, op.holds_when)),
            }
        }
        rows.iter()
            .map(|(names, takes, holds)| {
                let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                format!("| {} | {takes} | {holds} |\n", names.join(" "))
            })
            .collect()
    }

    #[test]
    fn docs_list_every_operator_as_the_table_defines_it() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md");
        let docs = std::fs::read_to_string(path).unwrap_or_default();
        let rows = markdown_rows();
        assert!(
            docs.contains(&rows),
            "{path} should contain the operator table:\n{rows}"
        );
    }

    #[test]
    fn names_and_lookup_follow_the_table() {
        let names: Vec<&str> = OPERATOR_DEFS.iter().map(|op| op.name).collect();
        assert_eq!(OPERATORS, names.as_slice());
        for name in OPERATORS {
            assert_eq!(Operator::named(name).map(|op| op.name), Some(*name));
        }
        assert!(Operator::named("matches").is_none());
    }
}
