//! `rollout lint` end to end: each check warns at its config path and only when its rule
//! holds, `--now` and `--max-age-days` move the line, and the exit code is 0 clean, 1 with
//! warnings, 2 for an invalid config.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use std::path::PathBuf;

mod common;

use common::{rollout, text};

const NOW: &str = "2026-11-24T12:00:00Z";

/// A scratch directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rollout-lint-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(test: &str, body: &str) -> String {
    let path = scratch(test).join("config.json");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `lint --json` of `body` (at `NOW` unless `extra` gives `--now`): the exit code and
/// (path, check, owner) of every warning.
fn lint(test: &str, body: &str, extra: &[&str]) -> (Option<i32>, Vec<(String, String, String)>) {
    let path = write(test, body);
    let mut args = vec!["lint", path.as_str(), "--json"];
    if !extra.contains(&"--now") {
        args.extend(["--now", NOW]);
    }
    args.extend_from_slice(extra);
    let out = rollout(&args);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--json output does not parse ({e}): {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    if !extra.contains(&"--now") {
        assert_eq!(json["now"], NOW);
    }
    let warnings = json["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["path"].as_str().unwrap().to_owned(),
                w["check"].as_str().unwrap().to_owned(),
                w["owner"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    (out.status.code(), warnings)
}

fn pairs(warnings: &[(String, String, String)]) -> Vec<(&str, &str)> {
    warnings
        .iter()
        .map(|(p, c, _)| (p.as_str(), c.as_str()))
        .collect()
}

/// One of each thing lint warns about.
const DUE: &str = r#"{
  "user_key": ["header:x-user-id"],
  "rollouts": {
    "checkout": {"owner": "team-checkout", "stable": "v1",
                 "versions": [{"name": "v1", "weight": 0}, {"name": "v2", "weight": 100}]},
    "search": {"match": {"path_prefix": "/search"}, "stable": "s1",
               "versions": [{"name": "s1"}, {"name": "s2"}],
               "schedule": {"start": "2026-10-01T00:00:00Z", "canary": {"percent": 10, "hold": "1d"}}},
    "cart": {"match": {"path_prefix": "/cart"}, "expires": "2026-11-20",
             "versions": [{"name": "c1", "weight": 1}, {"name": "c2", "weight": 1}]}
  },
  "flags": {
    "old-banner": {"owner": "team-web", "percentage": 50, "created": "2026-01-10",
                   "expires": "2026-06-01T08:00:00Z"},
    "ancient": {"percentage": 50, "created": "2026-05-01"},
    "legacy": {"enabled": false},
    "off-long": {"enabled": false, "created": "2026-10-01"},
    "dark-mode": {"percentage": 100, "rules": [{"when": [{"attribute": "key", "op": "equals", "value": "x"}], "serve": "on"}]},
    "unused": {"percentage": 0},
    "default-only": {"default": "off", "variants": [{"name": "off", "weight": 1}]}
  }
}"#;

#[test]
fn each_check_warns_at_its_path_with_the_owner() {
    let (code, warnings) = lint("due", DUE, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        pairs(&warnings),
        [
            ("flags.ancient.created", "old"),
            ("flags.dark-mode", "fully_on"),
            ("flags.default-only", "fully_off"),
            ("flags.legacy.enabled", "disabled"),
            ("flags.off-long.enabled", "disabled"),
            ("flags.old-banner.expires", "expired"),
            ("flags.old-banner.created", "old"),
            ("flags.unused", "fully_off"),
            ("rollouts.cart.expires", "expired"),
            ("rollouts.checkout.versions", "finished"),
            ("rollouts.search.schedule", "finished"),
        ]
    );
    let owners: Vec<(&str, &str)> = warnings
        .iter()
        .filter(|(_, _, o)| !o.is_empty())
        .map(|(p, _, o)| (p.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        owners,
        [
            ("flags.old-banner.expires", "team-web"),
            ("flags.old-banner.created", "team-web"),
            ("rollouts.checkout.versions", "team-checkout"),
        ]
    );
}

/// The same kinds of things, each on the right side of its rule.
const FINE: &str = r#"{
  "user_key": ["header:x-user-id"],
  "rollouts": {
    "blue-green": {"stable": "blue", "versions": [{"name": "blue", "weight": 100}, {"name": "green", "weight": 0}]},
    "canary": {"match": {"path_prefix": "/canary"}, "stable": "v1",
               "versions": [{"name": "v1", "weight": 0}, {"name": "v2", "weight": 100}],
               "allow": {"v1": ["qa-1"]}},
    "stopped": {"match": {"path_prefix": "/stopped"}, "aborted": true, "stable": "v1",
                "versions": [{"name": "v1", "weight": 0}, {"name": "v2", "weight": 1}]},
    "moving": {"match": {"path_prefix": "/moving"}, "stable": "s1",
               "versions": [{"name": "s1"}, {"name": "s2"}],
               "schedule": {"start": "2026-11-24T00:00:00Z", "canary": {"percent": 10, "hold": "1d"}}},
    "dated": {"match": {"path_prefix": "/dated"}, "expires": "2026-11-25",
              "versions": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}
  },
  "flags": {
    "young": {"percentage": 50, "created": "2026-11-01", "expires": "2026-11-24T12:00:01Z"},
    "planned": {"percentage": 50, "created": "2026-01-01", "expires": "2027-01-01"},
    "pulled": {"enabled": false, "created": "2026-11-10"},
    "almost": {"percentage": 100, "deny": ["vip"]},
    "split": {"percentage": 100, "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]},
    "ruled": {"percentage": 0, "rules": [{"when": [{"attribute": "key", "op": "equals", "value": "x"}], "serve": "on"}]},
    "listed": {"percentage": 0, "allow": ["qa-1"]}
  }
}"#;

#[test]
fn nothing_on_the_right_side_of_every_rule() {
    let (code, warnings) = lint("fine", FINE, &["--now", NOW]);
    assert_eq!(pairs(&warnings), []);
    assert_eq!(code, Some(0));
    // The text form says so too, with the time judged at.
    let path = write("fine-text", FINE);
    let out = rollout(&["lint", &path, "--now", NOW]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).ends_with(&format!("{path}: no warnings at {NOW}\n")),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn now_and_max_age_move_the_line() {
    let body =
        r#"{"flags": {"f": {"percentage": 50, "created": "2026-10-01", "expires": "2026-12-01"}}}"#;
    // 54 days old, not expired: clean at the default 90 days.
    assert_eq!(lint("age-a", body, &[]), (Some(0), vec![]));
    // Past its expiry.
    let (code, warnings) = lint("age-b", body, &["--now", "2026-12-01T00:00:00Z"]);
    assert_eq!(code, Some(1));
    assert_eq!(pairs(&warnings), [("flags.f.expires", "expired")]);
    // Older than a shorter limit, but its expiry is ahead: a plan beats the age.
    assert_eq!(
        lint("age-c", body, &["--max-age-days", "30"]),
        (Some(0), vec![])
    );
    let undated = r#"{"flags": {"f": {"percentage": 50, "created": "2026-10-01"}}}"#;
    let (code, warnings) = lint("age-d", undated, &["--max-age-days", "30"]);
    assert_eq!(code, Some(1));
    assert_eq!(pairs(&warnings), [("flags.f.created", "old")]);
}

#[test]
fn the_text_form_names_path_check_and_owner() {
    let path = write(
        "text",
        r#"{"flags": {"new-checkout": {"owner": "team-cart", "percentage": 50, "expires": "2026-11-01"}}}"#,
    );
    let out = rollout(&["lint", &path, "--now", NOW]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        format!(
            "flags.new-checkout.expires: expired 2026-11-01 (23 days ago): remove the flag from \
             the config and its branches from the code [expired] (owner: team-cart)\n\
             {path}: 1 warning(s) at {NOW}\n"
        )
    );
}

#[test]
fn an_invalid_config_exits_2_with_its_errors() {
    let path = write(
        "invalid",
        r#"{"flags": {"new-checkout": {"expires": "next week"}}}"#,
    );
    let out = rollout(&["lint", &path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("flags.new-checkout.expires: expected an RFC 3339 date"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).is_empty());
}
