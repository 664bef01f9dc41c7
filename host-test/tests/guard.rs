//! The guard and schedules through the filter .wasm, on the harness's virtual clock: two VMs
//! (as two Envoy workers) share counters and shared data; a failing or slow new version trips,
//! a healthy one does not, a schedule advances step by step, and a trip halts it until a new
//! revision. The same scenarios run in real Envoy in envoy/tests/test_guard.py.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use std::time::Duration;

use host_test::testing::filter_wasm_path;
use host_test::{Exchange, FilterModule, Vm, VmOptions, headers};
use rollout_core::{format_time, parse_time};

/// 2026-11-23T10:00:00Z, where every VM's clock starts.
const T0_MS: u64 = 1_795_428_000_000;

struct Workers {
    module: FilterModule,
    vms: Vec<Vm>,
    logbook: Vec<String>,
    next_vm: usize,
    /// The clocks' time, Unix ms.
    now_ms: u64,
}

/// What one request got.
struct Served {
    version: String,
    reason: Option<String>,
}

impl Workers {
    fn start(config: &str) -> Workers {
        let module = FilterModule::from_file(&filter_wasm_path()).unwrap_or_else(|e| {
            panic!("{e:#}\nbuild the filter first: cargo build -p rollout-filter --target wasm32-wasip1 --profile wasm")
        });
        let options = || VmOptions {
            start_time_ns: T0_MS * 1_000_000,
            ..VmOptions::default()
        };
        let mut vms: Vec<Vm> = (0..2)
            .map(|_| module.start_vm(options()).unwrap())
            .collect();
        for vm in &mut vms {
            assert!(vm.configure(config.as_bytes()).unwrap(), "config refused");
        }
        Workers {
            module,
            vms,
            logbook: Vec::new(),
            next_vm: 0,
            now_ms: T0_MS,
        }
    }

    fn reconfigure(&mut self, config: &str) {
        for vm in &mut self.vms {
            assert!(vm.configure(config.as_bytes()).unwrap(), "config refused");
        }
    }

    /// Advances every VM's clock in step.
    fn advance(&mut self, ms: u64) {
        for vm in &mut self.vms {
            vm.advance(Duration::from_millis(ms)).unwrap();
        }
        self.now_ms += ms;
    }

    fn advance_to(&mut self, t_ms: u64) {
        assert!(t_ms >= self.now_ms, "the clock only moves forward");
        self.advance(t_ms - self.now_ms);
    }

    /// One request of `user`, on the VMs in turn; the upstream answers `status` after
    /// `latency_ms` (every clock moves meanwhile).
    fn send(&mut self, user: &str, status: u16, latency_ms: u64) -> Served {
        let i = self.next_vm;
        self.next_vm = (i + 1) % self.vms.len();
        let status = status.to_string();
        let exchange = Exchange {
            request_headers: headers(&[
                (":method", "GET"),
                (":authority", "shop.example.com"),
                (":path", "/checkout"),
                ("x-user-id", user),
            ]),
            response_headers: headers(&[(":status", status.as_str())]),
            ..Exchange::default()
        };
        let stream = self.vms[i].begin(&exchange).unwrap();
        if latency_ms > 0 {
            self.advance(latency_ms);
        }
        let report = self.vms[i].finish(stream, &exchange).unwrap();
        self.logbook
            .extend(report.logs.iter().map(|l| l.message.clone()));
        let get = |name: &str| {
            report
                .client_response_headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        Served {
            version: get("x-rollout-version").unwrap_or_default(),
            reason: get("x-rollout-reason"),
        }
    }

    fn logs(&mut self) -> Vec<String> {
        for vm in &mut self.vms {
            let lines = vm.take_logs();
            self.logbook.extend(lines.into_iter().map(|l| l.message));
        }
        self.logbook.clone()
    }

    fn metric(&self, base: &str, tags: &[(&str, &str)]) -> i64 {
        let mut name = base.to_owned();
        for (k, v) in tags {
            name.push_str(&format!(".{k}=.={v};.;"));
        }
        self.module.metric(&name).unwrap_or(-1)
    }

    fn trip_lines(&mut self) -> Vec<String> {
        self.logs()
            .into_iter()
            .filter(|l| l.contains("guard tripped"))
            .collect()
    }
}

fn guarded(weights: (u32, u32), guard: &str) -> String {
    format!(
        r#"{{"user_key": ["header:x-user-id"], "rollouts": {{"checkout": {{
            "stable": "v1",
            "versions": [{{"name": "v1", "weight": {}}}, {{"name": "v2", "weight": {}}}],
            "guard": {guard}}}}}}}"#,
        weights.0, weights.1
    )
}

/// The seed scenario: v2 holds 10% and fails half its requests. The guard trips, and from then
/// on every user is served by v1; v2's users are told why.
#[test]
fn a_failing_new_version_trips_and_its_users_go_to_stable() {
    let mut w = Workers::start(&guarded(
        (90, 10),
        r#"{"min_requests": 20, "window": "10s"}"#,
    ));
    let v2_tags = [("rollout", "checkout"), ("version", "v2")];
    assert_eq!(w.metric("rollout_weight_ppm", &v2_tags), 100_000);
    assert_eq!(w.metric("rollout_guard_tripped", &v2_tags), 0);
    let mut v2_users = Vec::new();
    let (mut v2_seen, mut v2_failed, mut v2_flips) = (0, 0, 0);
    let mut tripped_at = None;
    for i in 0..20_000 {
        let user = format!("user-{}", i % 3_000);
        // v2 fails every other request it serves: the status is what its upstream answers.
        let status = if v2_flips % 2 == 0 { 500 } else { 200 };
        let served = w.send(&user, status, 0);
        if served.version == "v2" {
            v2_flips += 1;
            v2_seen += 1;
            v2_failed += u32::from(status == 500);
            if !v2_users.contains(&user) {
                v2_users.push(user.clone());
            }
        }
        if served.reason.as_deref() == Some("guard") && tripped_at.is_none() {
            tripped_at = Some(i);
        }
        // About 1,000 requests a second across both workers.
        if i % 10 == 0 {
            w.advance(10);
        }
        if tripped_at.is_some_and(|t| i > t + 5_000) {
            break;
        }
    }
    let tripped_at = tripped_at.expect("the guard never tripped");
    eprintln!(
        "trip after request {tripped_at}: v2 served {v2_seen} requests to {} users, {v2_failed} failed",
        v2_users.len()
    );
    // v2 was judged once it had 20 responses; the trip lands within a judgement or two.
    assert!(
        v2_seen < 200,
        "v2 served {v2_seen} requests before the trip"
    );
    for user in &v2_users {
        let served = w.send(user, 200, 0);
        assert_eq!(served.version, "v1", "{user} still on v2 after the trip");
        assert_eq!(served.reason.as_deref(), Some("guard"), "{user}");
    }
    let lines = w.trip_lines();
    assert_eq!(lines.len(), 1, "one trip line for the process: {lines:?}");
    assert!(
        lines[0].contains("version=v2 reason=errors"),
        "{}",
        lines[0]
    );
    let tags = [("rollout", "checkout"), ("version", "v2")];
    assert_eq!(
        w.metric(
            "rollout_guard_trips_total",
            &[tags[0], tags[1], ("reason", "errors")]
        ),
        1
    );
    assert_eq!(w.metric("rollout_guard_tripped", &tags), 1);
    assert_eq!(w.metric("rollout_weight_ppm", &tags), 0);
    // The latch holds: an hour later, v2 is still out.
    w.advance(3_600_000);
    assert_eq!(w.send(&v2_users[0], 200, 0).version, "v1");
    // A new revision of the rollout lifts it.
    w.reconfigure(&guarded(
        (90, 10),
        r#"{"min_requests": 25, "window": "10s"}"#,
    ));
    w.advance(200);
    let back = v2_users
        .iter()
        .filter(|u| w.send(u, 200, 0).version == "v2");
    assert_eq!(
        back.count(),
        v2_users.len(),
        "a new revision resets the trip"
    );
    assert_eq!(w.metric("rollout_guard_tripped", &tags), 0);
}

/// A healthy v2 (errors at half the limit) under steady load for five minutes: no trip.
#[test]
fn a_healthy_new_version_never_trips() {
    let mut w = Workers::start(&guarded((80, 20), r#"{"latency": {"bound": "300ms"}}"#));
    let mut v2 = 0u64;
    for i in 0..30_000u64 {
        let user = format!("user-{}", i % 5_000);
        // Every 40th response of v2 is a 500 (2.5%, half the 5% limit); v1 fails 1%.
        let status = if i % 40 == 0 { 500 } else { 200 };
        let served = w.send(&user, status, 0);
        v2 += u64::from(served.version == "v2");
        assert_ne!(served.reason.as_deref(), Some("guard"), "tripped at {i}");
        // 100 requests a second: five minutes.
        if i % 10 == 0 {
            w.advance(100);
        }
    }
    assert!(v2 > 5_000, "v2 served {v2}");
    assert_eq!(w.trip_lines(), Vec::<String>::new());
    assert_eq!(
        w.metric(
            "rollout_guard_tripped",
            &[("rollout", "checkout"), ("version", "v2")]
        ),
        0
    );
}

/// v2 answers a fifth of its requests after 400 ms against a 200 ms bound: a latency trip.
#[test]
fn a_slow_new_version_trips_on_latency() {
    let mut w = Workers::start(&guarded(
        (50, 50),
        r#"{"min_requests": 50, "latency": {"bound": "200ms", "max_ratio": 0.01}}"#,
    ));
    // Which users v2 serves (sticky per user), from one fast request each.
    let users: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
    let v2_users: Vec<&String> = users
        .iter()
        .filter(|u| w.send(u, 200, 20).version == "v2")
        .collect();
    assert!(v2_users.len() > 800, "{} users on v2", v2_users.len());
    // Then v2 answers every fifth request after 400 ms, v1 always within 20 ms.
    let mut tripped = false;
    'traffic: for round in 0..20 {
        for (i, user) in users.iter().enumerate() {
            let on_v2 = v2_users.contains(&user);
            let latency = if on_v2 && (i + round) % 5 == 0 {
                400
            } else {
                20
            };
            if w.send(user, 200, if on_v2 { latency } else { 20 })
                .reason
                .is_some()
            {
                tripped = true;
                break 'traffic;
            }
        }
    }
    assert!(tripped, "v2 never tripped");
    let lines = w.trip_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("reason=latency"), "{}", lines[0]);
}

fn scheduled(start_ms: u64, guard: &str) -> String {
    format!(
        r#"{{"user_key": ["header:x-user-id"], "rollouts": {{"checkout": {{
            "stable": "v1", "versions": [{{"name": "v1"}}, {{"name": "v2"}}],
            "schedule": {{"start": "{}", "steps": [
                {{"percent": 10, "hold": "3s"}}, {{"percent": 50, "hold": "3s"}}, {{"percent": 100}}]}},
            "guard": {guard}}}}}}}"#,
        format_time(start_ms)
    )
}

/// Share of `users` served by v2 now; every user in `on_v2` must still be there.
fn split(w: &mut Workers, users: &[String], on_v2: &mut [bool]) -> f64 {
    let mut n = 0;
    for (i, user) in users.iter().enumerate() {
        let now_v2 = w.send(user, 200, 0).version == "v2";
        assert!(now_v2 || !on_v2[i], "{user} went back to v1");
        on_v2[i] = now_v2;
        n += u32::from(now_v2);
    }
    f64::from(n) / users.len() as f64
}

/// A schedule advances at its holds; each step's split matches; nobody moves back; a trip
/// halts it where it is, and a new revision starts it again.
#[test]
fn a_schedule_advances_and_a_trip_halts_it_until_a_new_revision() {
    let start = T0_MS + 1_000;
    assert_eq!(parse_time(&format_time(start)), Some(start));
    let mut w = Workers::start(&scheduled(start, r#"{"min_requests": 50}"#));
    let users: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
    let mut on_v2 = vec![false; users.len()];
    let step_gauge = |w: &Workers| w.metric("rollout_schedule_step", &[("rollout", "checkout")]);
    assert_eq!(split(&mut w, &users, &mut on_v2), 0.0, "before the start");
    assert_eq!(step_gauge(&w), 0);
    for (step, share) in [(1, 0.10), (2, 0.50)] {
        w.advance(if step == 1 { 1_500 } else { 3_000 });
        let observed = split(&mut w, &users, &mut on_v2);
        let sigma = (share * (1.0 - share) / users.len() as f64).sqrt();
        assert!(
            (observed - share).abs() < 5.0 * sigma,
            "step {step}: {observed} on v2, expected {share}"
        );
        assert_eq!(step_gauge(&w), step);
    }
    // In step 2, v2 starts failing every request.
    let mut i = 0;
    while w.trip_lines().is_empty() {
        let user = &users[i % users.len()];
        let status = if w.send(user, 200, 0).version == "v2" {
            500
        } else {
            200
        };
        w.send(user, status, 0);
        i += 1;
        if i % 10 == 0 {
            w.advance(10);
        }
        assert!(i < 10_000, "no trip");
    }
    w.advance(200);
    // Past step 3's start: still everyone on v1, and the step gauge stays at 2.
    w.advance(5_000);
    let everyone_v1 = users.iter().all(|u| w.send(u, 200, 0).version == "v1");
    assert!(
        everyone_v1,
        "a tripped schedule must keep everyone on stable"
    );
    assert_eq!(step_gauge(&w), 2, "the schedule stops where it tripped");
    // A new revision (a new start) resets it: its step 3 (100%) begins 6 s after the start.
    let restart = w.now_ms + 1_000;
    w.reconfigure(&scheduled(restart, r#"{"min_requests": 50}"#));
    w.advance_to(restart + 6_500);
    let on_new = users
        .iter()
        .filter(|u| w.send(u, 200, 0).version == "v2")
        .count();
    assert_eq!(
        on_new,
        users.len(),
        "everyone on v2 at the new revision's last step"
    );
}
