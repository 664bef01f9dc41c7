//! Semantic versions for attribute rules (`semver_gte` and friends), ordered by SemVer 2.0
//! precedence: numbers first, a pre-release sorts below its release, build metadata is ignored.

use core::cmp::Ordering;

/// A parsed version such as `2.3.0-beta.1`. Missing minor or patch parts count as 0 and a
/// leading `v` is accepted, since app version headers often look like `v2.3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Semver {
    numbers: [u64; 3],
    pre_release: Vec<PreId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PreId {
    Numeric(u64),
    Alpha(String),
}

impl Semver {
    /// Parses `text`; `None` if it is not a version.
    pub(crate) fn parse(text: &str) -> Option<Semver> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let text = text.split_once('+').map_or(text, |(core, _build)| core);
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (text, None),
        };
        let mut numbers = [0u64; 3];
        for (idx, part) in core.split('.').enumerate() {
            let slot = numbers.get_mut(idx)?;
            *slot = parse_number(part)?;
        }
        let mut pre_release = Vec::new();
        if let Some(pre) = pre {
            for id in pre.split('.') {
                if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return None;
                }
                pre_release.push(match parse_number(id) {
                    Some(n) => PreId::Numeric(n),
                    None => PreId::Alpha(id.to_owned()),
                });
            }
        }
        Some(Semver {
            numbers,
            pre_release,
        })
    }
}

fn parse_number(part: &str) -> Option<u64> {
    if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

impl Ord for Semver {
    fn cmp(&self, other: &Self) -> Ordering {
        self.numbers.cmp(&other.numbers).then_with(|| {
            match (self.pre_release.is_empty(), other.pre_release.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre_release.cmp(&other.pre_release),
            }
        })
    }
}

impl PartialOrd for Semver {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PreId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (PreId::Numeric(a), PreId::Numeric(b)) => a.cmp(b),
            (PreId::Numeric(_), PreId::Alpha(_)) => Ordering::Less,
            (PreId::Alpha(_), PreId::Numeric(_)) => Ordering::Greater,
            (PreId::Alpha(a), PreId::Alpha(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for PreId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::Semver;

    fn check_order(lower: &str, higher: &str) {
        let (a, b) = (Semver::parse(lower), Semver::parse(higher));
        assert!(a.is_some() && b.is_some(), "{lower} {higher}");
        assert!(a < b, "{lower} < {higher}");
    }

    #[test]
    fn precedence_follows_semver_2() {
        check_order("1.0.0-alpha", "1.0.0-alpha.1");
        check_order("1.0.0-alpha.1", "1.0.0-alpha.beta");
        check_order("1.0.0-beta.2", "1.0.0-beta.11");
        check_order("1.0.0-rc.1", "1.0.0");
        check_order("1.9.0", "1.10.0");
        check_order("v2.3", "2.3.1");
        assert_eq!(Semver::parse("1.2.3+build.7"), Semver::parse("1.2.3"));
    }

    #[test]
    fn rejects_what_is_not_a_version() {
        for bad in [
            "",
            "x",
            "1..2",
            "1.2.3.4",
            "1.2.-3",
            "1.2.3-",
            "1.2.3-a..b",
            "99999999999999999999",
        ] {
            assert_eq!(Semver::parse(bad), None, "{bad}");
        }
    }
}
