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

mod common;

use common::{rollout, text};

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
    let revision = rollout_core::Config::from_json(
        &std::fs::read(workspace_root().join("examples/checkout.json")).unwrap(),
    )
    .unwrap()
    .digest_text();
    assert!(
        text(&good.stdout).contains(&format!(
            "ok (1 rollout(s), 3 version(s), 4 flag(s)), revision {revision}"
        )),
        "{}",
        text(&good.stdout)
    );
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
    assert_eq!(row.split_whitespace().nth(3), Some("10.000%"), "{row}");
    assert!(stdout.contains("20000 users (random ids)"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("theme=dark")),
        "{stdout}"
    );
}

/// The schedule of examples/canary-schedule.json: each step's start and the new version's
/// share in percent.
const CANARY_STEPS: [(&str, f64); 6] = [
    ("2026-11-23T10:00:00Z", 1.0),
    ("2026-11-23T10:10:00Z", 5.0),
    ("2026-11-23T10:20:00Z", 10.0),
    ("2026-11-23T10:40:00Z", 25.0),
    ("2026-11-23T11:10:00Z", 50.0),
    ("2026-11-23T12:10:00Z", 100.0),
];

fn explain_at(at: &str) -> serde_json::Value {
    let out = rollout(&[
        "explain",
        "examples/canary-schedule.json",
        "--json",
        "--at",
        at,
        "-H",
        "x-user-id: user-7",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["filter_agrees_with_core"], true, "{stdout}");
    json
}

#[test]
fn explain_at_a_time_places_it_in_the_schedule() {
    // (time, step, new version's ppm, next step); each run compiles the filter, so few.
    let cases = [
        ("2026-11-23T09:59:59Z", 0, 0, Some(CANARY_STEPS[0].0)),
        ("2026-11-23T10:40:00Z", 4, 250_000, Some(CANARY_STEPS[4].0)),
        ("2026-11-23T13:10:00.250+01:00", 6, 1_000_000, None),
    ];
    for (at, step, ppm, next) in cases {
        let json = explain_at(at);
        let schedule = &json["schedules"]["checkout"];
        assert_eq!(schedule["step"], step, "at {at}: {schedule}");
        assert_eq!(schedule["steps"], 6, "at {at}: {schedule}");
        assert_eq!(schedule["canary_ppm"], ppm, "at {at}: {schedule}");
        assert_eq!(schedule["next"].as_str(), next, "at {at}: {schedule}");
        assert_eq!(schedule["paused"], false, "at {at}: {schedule}");
        let rollout = &json["decision"]["rollout"];
        assert_eq!(rollout["reason"], "bucket", "at {at}: {rollout}");
        // Before the start everyone is on stable, after the end everyone on the new version.
        match step {
            0 => assert_eq!(rollout["version"], "v1", "at {at}"),
            6 => {
                assert_eq!(rollout["version"], "v2", "at {at}");
                assert_eq!(json["now"], "2026-11-23T12:10:00.250Z");
            }
            _ => {}
        }
    }

    let out = rollout(&[
        "explain",
        "examples/canary-schedule.json",
        "--at",
        "2026-11-23T10:25:00Z",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "schedule of checkout: step 3 of 6, v2 at 10%, next step at 2026-11-23T10:40:00Z"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("time: 2026-11-23T10:25:00Z"), "{stdout}");

    let bad = rollout(&["explain", "examples/canary-schedule.json", "--at", "10:25"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("--at \"10:25\""),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn explain_names_the_aborted_reason_and_the_filter_sets_its_header() {
    let dir = std::env::temp_dir().join(format!("rollout-cli-abort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example =
        std::fs::read_to_string(workspace_root().join("examples/canary-schedule.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&example).unwrap();
    config["rollouts"]["checkout"]["aborted"] = true.into();
    let path = dir.join("aborted.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let out = rollout(&[
        "explain",
        path.to_str().unwrap(),
        "--at",
        "2026-11-23T13:00:00Z",
        "-H",
        "x-user-id: user-7",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("rollout checkout: version v1 (aborted)"),
        "{stdout}"
    );
    assert!(stdout.contains("  x-rollout-reason: aborted"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn explain_text_spells_reasons_as_the_docs_and_json_do() {
    // The built-in example, a request without a user key: the rollout's reason and the key
    // status read as docs/config.md lists them, underscores included.
    let out = rollout(&["explain", "--path", "/checkout"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("(no_key_stable)"), "{stdout}");
    assert!(stdout.contains("key: missing"), "{stdout}");
    assert!(!stdout.contains("no key stable"), "{stdout}");
}

/// One row of the timeline table: step, start, configured %, v1 %, v2 %, moved to v2,
/// moved back.
struct Row {
    step: usize,
    start: String,
    configured: f64,
    v1: f64,
    v2: f64,
    forward: Option<u64>,
    back: Option<u64>,
}

fn timeline_rows(stdout: &str) -> Vec<Row> {
    let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().unwrap();
    let count = |s: &str| (s != "-").then(|| s.parse::<u64>().unwrap());
    stdout
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let step = f.first()?.parse().ok()?;
            Some(Row {
                step,
                start: f[1].to_owned(),
                configured: pct(f[2]),
                v1: pct(f[3]),
                v2: pct(f[4]),
                forward: count(f[5]),
                back: count(f[6]),
            })
        })
        .collect()
}

/// Whether `svg` is well-formed in the small XML the chart uses: every tag closed in order.
fn balanced_tags(svg: &str) -> Result<(), String> {
    let mut open: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(at) = rest.find('<') {
        let end = rest[at..].find('>').ok_or("a tag never ends")? + at;
        let tag = &rest[at + 1..end];
        let name = |t: &str| t.split_whitespace().next().unwrap_or("").to_owned();
        if let Some(closing) = tag.strip_prefix('/') {
            match open.pop() {
                Some(o) if name(o) == name(closing) => {}
                other => return Err(format!("</{closing}> closes {other:?}")),
            }
        } else if !tag.ends_with('/') {
            open.push(tag);
        }
        rest = &rest[end + 1..];
    }
    if open.is_empty() {
        Ok(())
    } else {
        Err(format!("never closed: {open:?}"))
    }
}

#[test]
fn timeline_simulates_every_step_and_nobody_moves_back() {
    let users = 5_000_u32;
    let svg = std::env::temp_dir().join(format!("rollout-cli-{}.svg", std::process::id()));
    let out = rollout(&[
        "simulate",
        "examples/canary-schedule.json",
        "--timeline",
        "--users",
        &users.to_string(),
        "--ids",
        "random",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let rows = timeline_rows(&stdout);
    assert_eq!(rows.len(), CANARY_STEPS.len(), "{stdout}");
    let n = f64::from(users);
    for (k, (row, (start, percent))) in rows.iter().zip(CANARY_STEPS).enumerate() {
        assert_eq!((row.step, row.start.as_str()), (k + 1, start), "{stdout}");
        assert_eq!(row.configured, percent, "{stdout}");
        // Binomial: 5 standard deviations, plus the table's rounding.
        let p = percent / 100.0;
        let bound = 5.0 * (p * (1.0 - p) / n).sqrt() * 100.0 + 0.001;
        assert!(
            (row.v2 - percent).abs() <= bound,
            "step {}: {stdout}",
            k + 1
        );
        assert!((row.v1 + row.v2 - 100.0).abs() < 0.002, "{stdout}");
        if k == 0 {
            assert_eq!((row.forward, row.back), (None, None), "{stdout}");
        } else {
            assert_eq!(row.back, Some(0), "step {}: {stdout}", k + 1);
            // Users are sticky, so the ones who moved are exactly the growth of v2.
            let grew = (row.v2 - rows[k - 1].v2) / 100.0 * n;
            let moved = row.forward.unwrap() as f64;
            assert!((moved - grew).abs() < 1.0, "step {}: {stdout}", k + 1);
        }
    }

    let chart = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    assert!(chart.starts_with("<svg "), "{chart}");
    assert!(chart.trim_end().ends_with("</svg>"), "{chart}");
    balanced_tags(&chart).unwrap();
    // One point per step, rising with the share (SVG's y grows downwards).
    let cys: Vec<f64> = chart
        .split(r#"<circle class="observed""#)
        .skip(1)
        .map(|c| {
            let cy = c.split("cy=\"").nth(1).unwrap();
            cy[..cy.find('"').unwrap()].parse().unwrap()
        })
        .collect();
    assert_eq!(cys.len(), CANARY_STEPS.len(), "{chart}");
    assert!(cys.windows(2).all(|w| w[1] < w[0]), "{cys:?}");
}

#[test]
fn timeline_refuses_a_rollout_without_schedule() {
    let out = rollout(&["simulate", "--timeline", "--users", "10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("rollout checkout, which has no schedule"),
        "{}",
        text(&out.stderr)
    );
}

/// A checkout config with a version no user gets by the hash (v2 at 0%), read tokens in a
/// header and a cookie, and key `k1`.
const OVERRIDE_CONFIG: &str = r#"{
  "user_key": ["header:x-user-id", "cookie:uid"],
  "overrides": {"header": "x-tester", "cookie": "tester",
                "keys": {"k1": "0123456789abcdef0123456789abcdef-k1"}},
  "rollouts": {"checkout": {"versions": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}]}},
  "flags": {"new-cart": {"percentage": 0},
            "theme": {"default": "classic", "variants": [{"name": "dark", "weight": 1}]}}
}"#;
const K1_SECRET: &str = "0123456789abcdef0123456789abcdef-k1";

/// A scratch directory for one test, with the override config in it.
fn override_dir(test: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("rollout-cli-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("overrides.json");
    std::fs::write(&config, OVERRIDE_CONFIG).unwrap();
    let config = config.to_str().unwrap().to_owned();
    (dir, config)
}

/// Runs `rollout` with the secret variable set to `secret`, or unset.
fn rollout_secret(args: &[&str], secret: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rollout"));
    command.args(args).current_dir(workspace_root());
    match secret {
        Some(s) => command.env("ROLLOUT_OVERRIDE_SECRET", s),
        None => command.env_remove("ROLLOUT_OVERRIDE_SECRET"),
    };
    command.output().unwrap()
}

/// `rollout sign` that must succeed: the token, alone on stdout.
fn sign_ok(args: &[&str], secret: Option<&str>) -> String {
    let out = rollout_secret(&[&["sign"], args].concat(), secret);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let token = stdout.trim_end_matches('\n');
    assert!(
        !token.contains('\n') && token.starts_with("r1.k1."),
        "{stdout:?}"
    );
    token.to_owned()
}

/// `rollout explain --json` of `config` for one request.
fn explain_json(config: &str, at: &str, headers: &[&str]) -> serde_json::Value {
    let mut args = vec!["explain", config, "--json", "--at", at];
    for h in headers {
        args.extend(["-H", h]);
    }
    let out = rollout_secret(&args, None);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["filter_agrees_with_core"], true, "{stdout}");
    json
}

/// The values the filter sent upstream for `name`.
fn upstream(json: &serde_json::Value, name: &str) -> Vec<String> {
    json["filter"]["upstream_request_headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_signed_token_reaches_a_version_at_0_percent_in_header_and_cookie() {
    let (dir, config) = override_dir("sign-explain");
    let out = rollout_secret(
        &[
            "sign",
            "--config",
            &config,
            "--version",
            "checkout=v2",
            "--flag",
            "new-cart=on",
            "--at",
            "2026-11-23T10:00:00Z",
            "--ttl",
            "2h",
        ],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let token = text(&out.stdout).trim_end().to_owned();
    assert!(
        token.starts_with("r1.k1.1795435200.v:checkout=v2&f:new-cart=on."),
        "{token}"
    );
    assert!(stderr.contains("expires 2026-11-23T12:00:00Z"), "{stderr}");
    assert!(
        stderr.contains("`x-tester: <token>`") && stderr.contains("`tester=<token>`"),
        "{stderr}"
    );

    let header = format!("x-tester: {token}");
    let cookie = format!("cookie: a=1; tester={token}; uid=7");
    for carrier in [header.as_str(), cookie.as_str()] {
        let json = explain_json(
            &config,
            "2026-11-23T11:59:59Z",
            &["x-user-id: user-1", carrier],
        );
        let decision = &json["decision"];
        assert_eq!(decision["override"], "valid", "{carrier}: {decision}");
        assert_eq!(decision["rollout"]["version"], "v2", "{decision}");
        assert_eq!(decision["rollout"]["reason"], "override", "{decision}");
        let cart = decision["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["flag"] == "new-cart")
            .unwrap();
        assert_eq!(
            (&cart["value"], &cart["reason"]),
            (&"on".into(), &"override".into())
        );
        let view = &json["override_token"];
        assert_eq!(view["status"], "valid", "{view}");
        assert_eq!(view["key_id"], "k1", "{view}");
        assert_eq!(view["expires"], "2026-11-23T12:00:00Z", "{view}");
        let claims = view["claims"].as_array().unwrap();
        assert_eq!(claims.len(), 2, "{view}");
        assert!(claims.iter().all(|c| c["applied"] == true), "{view}");
        assert_eq!(upstream(&json, "x-rollout-version"), vec!["v2"]);
        // The token never reaches the upstream, in either carrier.
        assert!(upstream(&json, "x-tester").is_empty(), "{json}");
        let sent = upstream(&json, "cookie").concat();
        assert!(!sent.contains("tester="), "{sent}");
        if carrier.starts_with("cookie") {
            assert_eq!(view["carrier"], "cookie tester", "{view}");
            assert_eq!(sent, "a=1; uid=7");
        } else {
            assert_eq!(view["carrier"], "header x-tester", "{view}");
        }
    }

    // Without the token the same user is on v1: the token, not the user, reached v2.
    let json = explain_json(&config, "2026-11-23T11:59:59Z", &["x-user-id: user-1"]);
    assert_eq!(json["decision"]["rollout"]["version"], "v1");
    assert!(json["override_token"].is_null(), "{json}");

    // Text output names the token and what each claim did.
    let out = rollout_secret(
        &[
            "explain",
            &config,
            "--at",
            "2026-11-23T11:00:00Z",
            "-H",
            &header,
        ],
        None,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for line in [
        "rollout checkout: version v2 (override)",
        "override token (header x-tester): valid, key k1, expires 2026-11-23T12:00:00Z (in 1h)",
        "  version checkout=v2: applied",
        "  flag new-cart=on: applied",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} missing:\n{stdout}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sign_with_a_config_refuses_what_the_config_does_not_have() {
    let (dir, config) = override_dir("sign-refuses");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--version", "checkout=v9"],
            "rollouts.checkout.versions has no \"v9\"",
        ),
        (&["--version", "cart=v2"], "has no rollouts.cart"),
        (
            &["--flag", "theme=blue"],
            "flags.theme has no value \"blue\"",
        ),
        (&["--flag", "nope=on"], "has no flags.nope"),
        (
            &["--version", "checkout=v2", "--key-id", "k2"],
            "has no overrides.keys.k2",
        ),
    ];
    for (claims, message) in cases {
        let out = rollout_secret(&[&["sign", "--config", &config], claims].concat(), None);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{claims:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{claims:?}: {message:?} missing: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{claims:?}: {}", text(&out.stdout));
    }
    // Nothing to claim, a ttl past the cap, or a secret that is not the config's key.
    let out = rollout_secret(&["sign", "--config", &config], None);
    assert!(text(&out.stderr).contains("at least one --version"));
    let out = rollout_secret(
        &[
            "sign",
            "--config",
            &config,
            "--version",
            "checkout=v2",
            "--ttl",
            "31d",
        ],
        None,
    );
    assert!(
        text(&out.stderr).contains("longer than 30d"),
        "{}",
        text(&out.stderr)
    );
    let out = rollout_secret(
        &["sign", "--config", &config, "--version", "checkout=v2"],
        Some("another secret that is long enough!!"),
    );
    assert!(
        text(&out.stderr).contains("is not overrides.keys.k1"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_token_signed_in_the_past_is_explained_as_expired() {
    let (dir, config) = override_dir("sign-expired");
    let token = sign_ok(
        &[
            "--config",
            &config,
            "--version",
            "checkout=v2",
            "--at",
            "2020-01-01T00:00:00Z",
            "--ttl",
            "1h",
        ],
        None,
    );
    let header = format!("x-tester: {token}");
    let valid = explain_json(&config, "2020-01-01T00:59:59Z", &[&header]);
    assert_eq!(valid["decision"]["override"], "valid");
    let expired = explain_json(&config, "2020-01-01T01:00:00Z", &[&header]);
    assert_eq!(expired["decision"]["override"], "expired");
    assert_eq!(expired["decision"]["rollout"]["version"], "v1");
    let view = &expired["override_token"];
    assert_eq!(view["status"], "expired", "{view}");
    assert_eq!(view["expires"], "2020-01-01T01:00:00Z", "{view}");
    assert_eq!(view["claims"][0]["applied"], false, "{view}");
    assert_eq!(
        view["claims"][0]["ignored"], "the token is expired",
        "{view}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_changed_token_is_explained_as_bad_signature() {
    let (dir, config) = override_dir("sign-changed");
    let token = sign_ok(
        &[
            "--config",
            &config,
            "--version",
            "checkout=v1",
            "--at",
            "2026-11-23T09:00:00Z",
        ],
        None,
    );
    // The claim rewritten to the version nobody gets: the signature no longer matches.
    let forged = token.replace("checkout=v1", "checkout=v2");
    assert_ne!(forged, token);
    let json = explain_json(
        &config,
        "2026-11-23T09:30:00Z",
        &["x-user-id: user-1", &format!("cookie: tester={forged}")],
    );
    assert_eq!(json["decision"]["override"], "bad_signature", "{json}");
    assert_eq!(json["decision"]["rollout"]["version"], "v1");
    assert_eq!(json["decision"]["rollout"]["reason"], "bucket");
    assert_eq!(json["override_token"]["status"], "bad_signature");
    assert_eq!(json["override_token"]["key_id"], "k1");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_secret_comes_from_the_environment_a_file_or_the_config() {
    let (dir, config) = override_dir("sign-secret");
    let claims = ["--version", "checkout=v2", "--at", "2026-11-23T10:00:00Z"];
    let from_config = sign_ok(
        &[&["--config", config.as_str()], &claims[..]].concat(),
        None,
    );
    let from_env = sign_ok(
        &[&["--key-id", "k1"], &claims[..]].concat(),
        Some(K1_SECRET),
    );
    // A file as `echo` writes it: the trailing newline is no part of the secret.
    let file = dir.join("k1.secret");
    std::fs::write(&file, format!("{K1_SECRET}\n")).unwrap();
    let file = file.to_str().unwrap();
    let from_file = sign_ok(
        &[&["--key-id", "k1", "--secret-file", file], &claims[..]].concat(),
        None,
    );
    assert_eq!(from_env, from_config);
    assert_eq!(from_file, from_config);
    // A different secret makes a different signature over the same claims.
    let other = sign_ok(
        &[&["--key-id", "k1"], &claims[..]].concat(),
        Some("another secret that is long enough!!"),
    );
    assert_ne!(other, from_config);
    assert_eq!(
        other.rsplit_once('.').unwrap().0,
        from_config.rsplit_once('.').unwrap().0
    );

    let none = rollout_secret(&[&["sign", "--key-id", "k1"], &claims[..]].concat(), None);
    assert_eq!(none.status.code(), Some(2));
    let stderr = text(&none.stderr);
    assert!(
        stderr.contains("--secret-file") && stderr.contains("$ROLLOUT_OVERRIDE_SECRET"),
        "{stderr}"
    );
    let short = rollout_secret(
        &[&["sign", "--key-id", "k1"], &claims[..]].concat(),
        Some("short"),
    );
    assert!(
        text(&short.stderr).contains("at least 32 bytes (secret from $ROLLOUT_OVERRIDE_SECRET)"),
        "{}",
        text(&short.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keygen_prints_fresh_secrets_that_sign_accepts() {
    let a = text(&rollout(&["keygen"]).stdout).trim_end().to_owned();
    let b = text(&rollout(&["keygen"]).stdout).trim_end().to_owned();
    assert_ne!(a, b);
    for key in [&a, &b] {
        assert_eq!(key.len(), 43, "{key}");
        assert!(
            key.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{key}"
        );
    }
    sign_ok(&["--key-id", "k1", "--version", "checkout=v2"], Some(&a));
}

/// A scratch folder for one test.
fn scratch(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rollout-cli-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn validate_checks_a_live_plugin_configuration_with_the_filters_rules() {
    let dir = scratch("live");
    let good = dir.join("live-good.json");
    std::fs::write(
        &good,
        r#"{"config_source": {"cluster": "rollout-config", "path": "/rollout.json", "poll_interval_ms": 50},
            "fallback": {"rollouts": {"checkout": {"stable": "v1", "versions": [{"name": "v1", "weight": 1}]}}}}"#,
    )
    .unwrap();
    let out = rollout(&["validate", good.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains(r#"ok (live source: cluster "rollout-config", path "/rollout.json"; fallback: 1 rollout(s), 1 version(s), 0 flag(s)"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("Envoy must have a cluster named \"rollout-config\""),
        "{stdout}"
    );

    let bad = dir.join("live-bad.json");
    std::fs::write(
        &bad,
        r#"{"config_source": {"cluster": "rollout-config", "path": "rollout.json", "pol_interval_ms": 50},
            "fallback": {"rollouts": {"checkout": {"versions": [{"name": "v1", "weight": -10}]}}},
            "override_keys": {"k1": "short"}}"#,
    )
    .unwrap();
    let out = rollout(&["validate", bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("live-bad.json: 4 error(s)"), "{stderr}");
    for line in [
        "  config_source.pol_interval_ms: unknown field, expected one of: cluster, path, authority, poll_interval_ms, timeout_ms, long_poll_s",
        "  config_source.path: expected a path starting with '/', found \"rollout.json\"",
        "  fallback.rollouts.checkout.versions[0].weight: expected an integer weight from 0 to 1000000, found -10",
        "  override_keys.k1:",
    ] {
        assert!(stderr.contains(line), "{line:?} missing from:\n{stderr}");
    }
    // explain takes a rollout config, and says so rather than only "unknown field".
    let out = rollout(&["explain", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("`rollout validate` checks it"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_filter_is_found_by_flag_variable_next_to_the_executable_or_build_tree() {
    let wasm = host_test::testing::filter_wasm_path();
    let filter_line = |out: &Output| -> String {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    // The build tree compiled in, when nothing else is given.
    let out = Command::new(env!("CARGO_BIN_EXE_rollout"))
        .args(["explain", "-H", "x-user-id: a"])
        .env_remove("ROLLOUT_FILTER")
        .output()
        .unwrap();
    assert!(
        filter_line(&out).ends_with("(the build tree rollout was built in)"),
        "{}",
        filter_line(&out)
    );
    // $ROLLOUT_FILTER, and --filter before it.
    let out = Command::new(env!("CARGO_BIN_EXE_rollout"))
        .args(["explain", "-H", "x-user-id: a"])
        .env("ROLLOUT_FILTER", &wasm)
        .output()
        .unwrap();
    assert_eq!(
        filter_line(&out),
        format!("filter .wasm: {} ($ROLLOUT_FILTER)", wasm.display())
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rollout"))
        .args([
            "explain",
            "-H",
            "x-user-id: a",
            "--filter",
            wasm.to_str().unwrap(),
        ])
        .env("ROLLOUT_FILTER", "/nonexistent/rollout_filter.wasm")
        .output()
        .unwrap();
    assert_eq!(
        filter_line(&out),
        format!("filter .wasm: {} (--filter)", wasm.display())
    );
    // A name that is wrong is an error naming it, not a silent fall back to another build.
    let out = Command::new(env!("CARGO_BIN_EXE_rollout"))
        .args(["explain", "-H", "x-user-id: a"])
        .env("ROLLOUT_FILTER", "/nonexistent/rollout_filter.wasm")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).trim(),
        "error: $ROLLOUT_FILTER=/nonexistent/rollout_filter.wasm: no such file"
    );
    let out = rollout(&[
        "simulate",
        "--users",
        "10",
        "--filter",
        "/nonexistent/f.wasm",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("error: --filter /nonexistent/f.wasm: no such file"));
    // An installed copy of the binary finds the filter installed beside it. A hard link, in
    // a folder on the binary's file system, stands for the installed copy.
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_rollout"));
    let bin = exe
        .parent()
        .unwrap()
        .join(format!("installed-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    let installed = bin.join("rollout");
    let _ = std::fs::remove_file(&installed);
    if std::fs::hard_link(&exe, &installed).is_err() {
        std::fs::copy(&exe, &installed).unwrap();
    }
    std::fs::copy(&wasm, bin.join("rollout_filter.wasm")).unwrap();
    let out = Command::new(&installed)
        .args(["explain", "-H", "x-user-id: a"])
        .env_remove("ROLLOUT_FILTER")
        .current_dir(scratch("installed"))
        .output()
        .unwrap();
    let line = filter_line(&out);
    std::fs::remove_dir_all(&bin).unwrap();
    assert_eq!(
        line,
        format!(
            "filter .wasm: {} (next to the rollout executable)",
            bin.join("rollout_filter.wasm").display()
        )
    );
}
