//! Loading a config with long allow lists stays roughly linear: a check that a quadratic walk
//! (which once took seconds for 30,000 keys) has not come back. Not a timing test: it counts
//! nothing but the outcome; `cargo test --release -- --ignored big` prints the time.

use rollout_core::{Config, HostInputs, VersionReason};

fn config(n: usize) -> String {
    let keys = |prefix: &str| {
        (0..n)
            .map(|i| format!("\"{prefix}-{}\"", (i * 7919) % n))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"user_key":["header:u"],"rollouts":{{"r":{{"versions":[{{"name":"a","weight":1}},
        {{"name":"b","weight":0}}],"allow":{{"b":[{}]}}}}}},"flags":{{"f":{{"percentage":0,
        "allow":[{}]}}}}}}"#,
        keys("emp"),
        keys("beta")
    )
}

#[test]
fn every_key_of_a_long_allow_list_is_found() {
    let n = 5_000;
    let config = Config::from_json(config(n).as_bytes()).unwrap();
    for i in [0, 1, n / 2, n - 1] {
        let key = format!("emp-{i}");
        let d = config.decide(&[("u", key.as_str())][..], HostInputs::default());
        assert_eq!(
            d.rollout.map(|r| r.reason),
            Some(VersionReason::AllowList),
            "{key}"
        );
        let key = format!("beta-{i}");
        let d = config.decide(&[("u", key.as_str())][..], HostInputs::default());
        assert_eq!(d.flags[0].value, "on", "{key}");
    }
}

#[test]
#[ignore = "prints a load time; run with --release"]
fn big() {
    for n in [1_000, 10_000, 30_000] {
        let text = config(n);
        let start = std::time::Instant::now();
        let parsed = Config::from_json(text.as_bytes());
        println!(
            "{n} keys per list: {:?} ({})",
            start.elapsed(),
            parsed.is_ok()
        );
    }
}
