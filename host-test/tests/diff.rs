//! `rollout diff OLD NEW` end to end: the users it says move are the ones the core moves,
//! reshuffling changes are named, and `--max-moved` and invalid configs set the exit code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use std::path::PathBuf;

use host_test::testing::workspace_root;
use rollout_core::{Config, HostInputs};

mod common;

use common::{rollout, text};

/// A scratch directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rollout-diff-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config with one rollout `checkout` of v1 and `second` at the given weights, and one flag.
fn config(second: &str, v1: u32, v2: u32, rollout_salt: Option<&str>, flag_salt: &str) -> String {
    let salt = rollout_salt.map_or(String::new(), |s| format!(r#""salt": "{s}","#));
    format!(
        r#"{{"user_key": ["header:x-user-id"],
            "rollouts": {{"checkout": {{{salt} "versions": [
                {{"name": "v1", "weight": {v1}}}, {{"name": "{second}", "weight": {v2}}}]}}}},
            "flags": {{"new-cart": {{"percentage": 30, "salt": "{flag_salt}"}}}}}}"#
    )
}

fn write(dir: &std::path::Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

fn diff_json(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut all = vec!["diff", "--json"];
    all.extend_from_slice(args);
    let out = rollout(&all);
    let stderr = text(&out.stderr);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json output does not parse ({e}): {}", text(&out.stdout)));
    (out.status.code(), json, stderr)
}

fn item<'a>(json: &'a serde_json::Value, section: &str, name: &str) -> &'a serde_json::Value {
    json[section]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {section} {name} in {json}"))
}

/// The (from, to) cells of a matrix whose value changed, with their counts.
fn moves(item: &serde_json::Value) -> Vec<(String, String, u64)> {
    item["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["from"] != c["to"])
        .map(|c| {
            (
                c["from"].as_str().unwrap().to_owned(),
                c["to"].as_str().unwrap().to_owned(),
                c["users"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_weight_change_moves_exactly_the_users_the_core_moves_and_only_into_the_raised_version() {
    let dir = scratch("weights");
    let old_text = config("v2", 90, 10, None, "new-cart");
    let new_text = config("v2", 80, 20, None, "new-cart");
    let old = write(&dir, "old.json", &old_text);
    let new = write(&dir, "new.json", &new_text);
    let (code, json, stderr) = diff_json(&[&old, &new, "--users", "10000"]);
    assert_eq!(code, Some(0), "{stderr}");

    // The core itself, user by user, with the key the CLI's population uses.
    let (a, b) = (
        Config::from_json(old_text.as_bytes()).unwrap(),
        Config::from_json(new_text.as_bytes()).unwrap(),
    );
    let mut expected = 0u64;
    for i in 0..10_000 {
        let request = [
            (":path", "/".to_owned()),
            ("x-user-id", format!("user-{i}")),
        ];
        let version = |c: &Config| {
            c.decide(&request[..], HostInputs::default())
                .rollout
                .unwrap()
                .version
                .to_owned()
        };
        let (from, to) = (version(&a), version(&b));
        if from != to {
            assert_eq!((from.as_str(), to.as_str()), ("v1", "v2"), "user-{i}");
            expected += 1;
        }
    }
    let checkout = item(&json, "rollouts", "checkout");
    assert_eq!(checkout["moved"].as_u64(), Some(expected));
    assert_eq!(
        moves(checkout),
        vec![("v1".to_owned(), "v2".to_owned(), expected)]
    );
    // About 10% are asked to move; 10,000 users give a standard error of 0.3 points.
    let pct = checkout["moved_percent"].as_f64().unwrap();
    assert!((8.5..11.5).contains(&pct), "{pct}% moved");
    assert_eq!(item(&json, "flags", "new-cart")["moved"], 0);
    assert_eq!(json["users"], 10_000);
}

#[test]
fn identical_configs_move_nobody() {
    let (code, json, stderr) = diff_json(&[
        "examples/checkout.json",
        "examples/checkout.json",
        "--users",
        "2000",
        "--max-moved",
        "0",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let items: Vec<&serde_json::Value> = json["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .chain(json["flags"].as_array().unwrap())
        .collect();
    assert_eq!(items.len(), 5, "{json}");
    for i in items {
        assert_eq!(i["moved"], 0, "{i}");
        assert!(moves(i).is_empty(), "{i}");
        assert!(i["notes"].as_array().unwrap().is_empty(), "{i}");
    }
    assert!(json["over_limit"].as_array().unwrap().is_empty());
}

#[test]
fn a_new_salt_and_a_renamed_version_are_called_out() {
    let dir = scratch("reshuffle");
    let old = write(&dir, "old.json", &config("v2", 50, 50, None, "new-cart"));
    let new = write(
        &dir,
        "new.json",
        &config("v2", 50, 50, Some("checkout-2"), "cart-2"),
    );
    let renamed = write(
        &dir,
        "renamed.json",
        &config("v2b", 50, 50, None, "new-cart"),
    );

    let out = rollout(&["diff", &old, &new, "--users", "4000"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains(r#"salt changed ("checkout" -> "checkout-2"): reshuffles everyone"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"salt changed ("new-cart" -> "cart-2"): reshuffles everyone"#),
        "{stdout}"
    );
    // A new salt at 50/50 moves about half the users, both ways.
    let (_, json, _) = diff_json(&[&old, &new, "--users", "4000"]);
    let checkout = item(&json, "rollouts", "checkout");
    let pct = checkout["moved_percent"].as_f64().unwrap();
    assert!((45.0..55.0).contains(&pct), "{pct}% moved");
    assert_eq!(moves(checkout).len(), 2, "{checkout}");

    let (code, json, stderr) = diff_json(&[&old, &renamed, "--users", "4000"]);
    assert_eq!(code, Some(0), "{stderr}");
    let checkout = item(&json, "rollouts", "checkout");
    let notes = checkout["notes"].to_string();
    assert!(notes.contains("version v2 renamed to v2b"), "{notes}");
    assert!(checkout["moved"].as_u64().unwrap() > 0, "{checkout}");
}

#[test]
fn max_moved_gates_on_the_largest_move_and_an_invalid_config_exits_2() {
    let dir = scratch("gate");
    let old = write(&dir, "old.json", &config("v2", 90, 10, None, "new-cart"));
    let new = write(&dir, "new.json", &config("v2", 80, 20, None, "new-cart"));

    let under = rollout(&["diff", &old, &new, "--users", "3000", "--max-moved", "15"]);
    assert_eq!(under.status.code(), Some(0), "{}", text(&under.stderr));

    let over = rollout(&["diff", &old, &new, "--users", "3000", "--max-moved", "5"]);
    let stderr = text(&over.stderr);
    assert_eq!(over.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rollout checkout moves more than --max-moved 5% of users"),
        "{stderr}"
    );
    assert!(!stderr.contains("flag new-cart"), "{stderr}");
    let (code, json, _) = diff_json(&[&old, &new, "--users", "3000", "--max-moved", "5"]);
    assert_eq!(code, Some(1));
    assert_eq!(json["over_limit"], serde_json::json!(["rollout checkout"]));

    let bad = write(
        &dir,
        "bad.json",
        r#"{"rollouts": {"checkout": {"versions": [{"name": "v1", "weight": -1}]}}}"#,
    );
    let invalid = rollout(&["diff", &old, &bad]);
    let stderr = text(&invalid.stderr);
    assert_eq!(invalid.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rollouts.checkout.versions[0].weight:"),
        "{stderr}"
    );
}

#[test]
fn an_id_file_is_the_population_and_added_or_removed_items_are_reported() {
    let dir = scratch("ids");
    let old = write(&dir, "old.json", &config("v2", 90, 10, None, "new-cart"));
    let new = write(
        &dir,
        "new.json",
        r#"{"user_key": ["header:x-user-id"],
            "rollouts": {"search": {"versions": [{"name": "a", "weight": 1}]}},
            "flags": {"dark": {"percentage": 100}}}"#,
    );
    let ids = write(&dir, "ids.txt", "alice\nbob\n\ncarol\n");
    let (code, json, stderr) = diff_json(&[&old, &new, "--ids", &ids]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["users"], 3);
    let checkout = item(&json, "rollouts", "checkout");
    assert_eq!(checkout["status"], "removed");
    // Every user leaves the removed rollout: none of them gets a version of it any more.
    assert_eq!(checkout["moved"], 3);
    assert!(moves(checkout).iter().all(|(_, to, _)| to == "-"));
    assert_eq!(item(&json, "rollouts", "search")["status"], "added");
    let dark = item(&json, "flags", "dark");
    assert_eq!(dark["status"], "added");
    assert_eq!(moves(dark), vec![("-".to_owned(), "on".to_owned(), 3)]);
}

#[test]
fn schedules_are_compared_step_by_step_and_differ_only_where_a_step_changed() {
    let dir = scratch("schedule");
    let old_text =
        std::fs::read_to_string(workspace_root().join("examples/canary-schedule.json")).unwrap();
    let changed = r#"{"percent": 20, "hold": "20m"}"#;
    let new_text = old_text.replace(r#"{"percent": 10, "hold": "20m"}"#, changed);
    assert!(
        new_text.contains(changed),
        "the example's third step changed"
    );
    let old = write(&dir, "old.json", &old_text);
    let new = write(&dir, "new.json", &new_text);
    let (code, json, stderr) = diff_json(&[
        &old,
        &new,
        "--schedule",
        "--users",
        "3000",
        "--at",
        "2026-11-23T10:25:00Z",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let schedules = json["schedules"].as_array().unwrap();
    assert_eq!(schedules.len(), 1, "{json}");
    let steps = schedules[0]["steps"].as_array().unwrap();
    // Before the start, then the six steps.
    assert_eq!(steps.len(), 7, "{json}");
    let differing: Vec<&serde_json::Value> = steps.iter().filter(|s| s["moved"] != 0).collect();
    assert_eq!(differing.len(), 1, "{json}");
    let step3 = differing[0];
    assert_eq!(step3["at"], "2026-11-23T10:20:00Z");
    assert_eq!(step3["old"]["canary_ppm"], 100_000);
    assert_eq!(step3["new"]["canary_ppm"], 200_000);
    // 10:25 is inside that step: the same users as the comparison at --at.
    assert_eq!(
        step3["moved"],
        item(&json, "rollouts", "checkout")["moved"],
        "{json}"
    );
    let (_, plain, _) = diff_json(&[&old, &new, "--users", "10"]);
    assert!(plain.get("schedules").is_none(), "only with --schedule");
}
