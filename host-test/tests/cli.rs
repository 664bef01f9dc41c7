//! The `rollout` CLI end to end: exit codes, error paths, and the simulated split.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use std::process::{Command, Output};

use host_test::testing::workspace_root;

fn rollout(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rollout"))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_lists_every_error_path_and_fails() {
    let dir = std::env::temp_dir().join(format!("rollout-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"rollouts":{"checkout":{"versions":[{"name":"v1","weight":90},{"name":"v2","weight":-10}],"stabel":"v1"}},
            "flags":{"f":{"percentage":150}}}"#,
    )
    .unwrap();
    let out = rollout(&["validate", bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for path in [
        "rollouts.checkout.stabel:",
        "rollouts.checkout.versions[1].weight:",
        "flags.f.percentage:",
    ] {
        assert!(stderr.contains(path), "{path} missing from:\n{stderr}");
    }
    let good = rollout(&["validate", "examples/checkout.json"]);
    assert_eq!(good.status.code(), Some(0), "{}", text(&good.stderr));
    assert!(text(&good.stdout).contains("ok (1 rollout(s), 3 version(s), 4 flag(s))"));
}

#[test]
fn explain_shows_the_decision_and_the_filter_agrees_despite_spoofed_headers() {
    let out = rollout(&[
        "explain",
        "--json",
        "-H",
        "x-user-id: qa-1",
        "-H",
        "x-rollout-version: v3",
        "-H",
        "x-rollout-flags: new-cart=on",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["filter_agrees_with_core"], true);
    assert_eq!(json["decision"]["key"]["header"], "x-user-id");
    let flags = json["decision"]["flags"].as_array().unwrap();
    let payments = flags.iter().find(|f| f["flag"] == "payments-v2").unwrap();
    assert_eq!(
        (payments["value"].as_str(), payments["reason"].as_str()),
        (Some("on"), Some("allow_list"))
    );
    let version = json["decision"]["rollout"]["version"].as_str().unwrap();
    let upstream = json["filter"]["upstream_request_headers"]
        .as_array()
        .unwrap();
    let sent: Vec<&str> = upstream
        .iter()
        .filter(|h| h[0] == "x-rollout-version")
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(sent, vec![version]);
}

#[test]
fn simulate_prints_a_split_close_to_the_weights() {
    let out = rollout(&["simulate", "--users", "20000", "--ids", "random"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    // checkout/v2 has weight 1000 of 10000: expect 2000 users, sd ~42.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("checkout/v2"))
        .unwrap();
    let users: f64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((users - 2000.0).abs() < 5.0 * 42.4, "{row}");
    assert!(stdout.contains("20000 users (random ids)"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("theme=dark")),
        "{stdout}"
    );
}
