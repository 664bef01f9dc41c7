//! `rollout simulate --timeline`: the simulated users at every step of a rollout's schedule,
//! through the filter .wasm with its clock set inside each step, and the SVG chart of it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use host_test::Exchange;
use rollout_core::{Config, HostInputs, ScheduleState, format_time};

use crate::{
    IdShape, RequestArgs, config_key_source, configured_vm, percent, ppm_text, progress_bar,
    user_headers, user_id,
};

/// A rollout with a schedule, and where the schedule stands at one moment.
pub(crate) struct Scheduled<'c> {
    /// The rollout's name.
    pub(crate) rollout: &'c str,
    /// The version the schedule rolls out.
    pub(crate) new_version: &'c str,
    /// The stable version, which gets the rest.
    pub(crate) stable_version: &'c str,
    /// The state at the moment asked for.
    pub(crate) state: ScheduleState,
}

/// Every rollout with a schedule, in config order, with its state at `now_ms`.
pub(crate) fn scheduled_rollouts(config: &Config, now_ms: u64) -> Vec<Scheduled<'_>> {
    config
        .rollout_names()
        .filter_map(|rollout| {
            let state = config.schedule_at(rollout, Some(now_ms))?;
            let (stable_version, new_version) = config.schedule_versions(rollout)?;
            Some(Scheduled {
                rollout,
                new_version,
                stable_version,
                state,
            })
        })
        .collect()
}

/// One step of the timeline as simulated.
struct StepRow {
    /// When the step begins (Unix ms).
    start_ms: u64,
    /// The moment the users were sent (Unix ms).
    at_ms: u64,
    /// The schedule's state at that moment.
    state: ScheduleState,
    /// The new version's share in force at that moment, in parts per million.
    configured_ppm: u32,
    /// Users per version of the rollout, in config order.
    seen: Vec<u64>,
    /// Users who reached the rollout.
    matched: u64,
    /// Users on the new version now who were on stable at the previous step.
    moved_forward: Option<u64>,
    /// Users on stable now who were on the new version at the previous step: a bug.
    moved_back: Option<u64>,
}

/// The moment each step is simulated at: the middle of its hold; the last step, which has no
/// end, as far in as an average step is long (also where the chart ends).
fn moments(starts: &[u64]) -> (Vec<u64>, u64) {
    let (Some(&first), Some(&last)) = (starts.first(), starts.last()) else {
        return (Vec::new(), 0);
    };
    let tail = match starts.len() {
        0 | 1 => 3_600_000,
        n => ((last - first) / (n as u64 - 1)).max(60_000),
    };
    let mut out: Vec<u64> = starts
        .windows(2)
        .filter_map(|w| match w {
            [a, b] => Some(a + (b - a) / 2),
            _ => None,
        })
        .collect();
    out.push(last.saturating_add(tail / 2));
    (out, last.saturating_add(tail))
}

/// Runs the timeline and prints it; writes the chart to `svg` if given.
pub(crate) fn run(
    config: &Config,
    bytes: &[u8],
    users: u64,
    ids: IdShape,
    request: &RequestArgs,
    svg: Option<&Path>,
) -> Result<ExitCode> {
    let base = request.headers()?;
    let key_source = config_key_source(config);
    // Which rollout the simulated requests reach does not depend on the time or the user.
    let probe = user_headers(&base, key_source.as_ref(), "user-0");
    let Some(choice) = config
        .decide(probe.as_slice(), HostInputs::default())
        .rollout
    else {
        bail!(
            "the simulated requests (host {}, path {}) match no rollout: try --host and --path",
            request.host,
            request.path
        );
    };
    let rollout = choice.rollout;
    let Some(scheduled) = scheduled_rollouts(config, 0)
        .into_iter()
        .find(|s| s.rollout == rollout)
    else {
        bail!("the simulated requests reach rollout {rollout}, which has no schedule");
    };
    let versions: Vec<&str> = config
        .versions()
        .filter(|(r, _)| *r == rollout)
        .map(|(_, v)| v)
        .collect();
    let index = |name: &str| versions.iter().position(|v| *v == name);
    let (Some(stable_idx), Some(new_idx)) = (
        index(scheduled.stable_version),
        index(scheduled.new_version),
    ) else {
        bail!("rollout {rollout}: its versions are not those of its schedule");
    };
    let new_slot = config
        .slot_of(rollout, scheduled.new_version)
        .with_context(|| format!("rollout {rollout} has no version {}", scheduled.new_version))?;
    let starts = config.step_starts(rollout).unwrap_or_default();
    let (at, end_ms) = moments(&starts);
    let names = config.header_names().clone();
    let module = request.filter()?;
    let progress = progress_bar(users.saturating_mul(starts.len() as u64));
    // Each user's version at the previous step: 0 for none, else its index plus one.
    let mut previous: Option<Vec<u8>> = None;
    let mut rows = Vec::with_capacity(starts.len());
    for (&start_ms, &at_ms) in starts.iter().zip(&at) {
        // A fresh VM per step whose clock starts inside the step: Vm::advance would fire
        // every tick of the hours in between.
        let mut vm = configured_vm(&module, bytes, at_ms)?;
        let mut now = Vec::with_capacity(users as usize);
        let mut seen = vec![0_u64; versions.len()];
        for i in 0..users {
            let report = vm.exchange(&Exchange {
                request_headers: user_headers(&base, key_source.as_ref(), &user_id(ids, i)),
                ..Exchange::default()
            })?;
            let header = |name: &str| {
                report
                    .upstream_request_headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            };
            let code = match (header(&names.rollout), header(&names.version)) {
                (Some(r), Some(v)) if r == rollout => index(v).map_or(0, |i| i + 1),
                _ => 0,
            };
            if let Some(n) = code.checked_sub(1).and_then(|i| seen.get_mut(i)) {
                *n += 1;
            }
            now.push(code as u8);
            progress.inc(1);
        }
        let moves = |from: usize, to: usize| {
            previous.as_ref().map(|before| {
                before
                    .iter()
                    .zip(&now)
                    .filter(|&(&b, &n)| usize::from(b) == from + 1 && usize::from(n) == to + 1)
                    .count() as u64
            })
        };
        rows.push(StepRow {
            start_ms,
            at_ms,
            state: config
                .schedule_at(rollout, Some(at_ms))
                .context("the schedule vanished")?,
            configured_ppm: config
                .shares_at(Some(at_ms), &[])
                .get(new_slot)
                .copied()
                .unwrap_or(0),
            matched: seen.iter().sum(),
            seen,
            moved_forward: moves(stable_idx, new_idx),
            moved_back: moves(new_idx, stable_idx),
        });
        previous = Some(now);
    }
    progress.finish_and_clear();
    print_table(&scheduled, &versions, &rows, users, ids);
    if let Some(path) = svg {
        let chart = chart(&scheduled, new_idx, &rows, end_ms, users);
        std::fs::write(path, chart).with_context(|| format!("writing {}", path.display()))?;
        println!("chart: {}", path.display());
    }
    let back: u64 = rows.iter().filter_map(|r| r.moved_back).sum();
    if back > 0 {
        println!(
            "error: {back} user(s) moved back to {}: a schedule only moves users forward",
            scheduled.stable_version
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(
    scheduled: &Scheduled<'_>,
    versions: &[&str],
    rows: &[StepRow],
    users: u64,
    ids: IdShape,
) {
    let new = scheduled.new_version;
    println!(
        "rollout {}: {new} replaces {}; {users} users ({} ids) per step, sent halfway through \
         each step (the last: as far in as an average step)",
        scheduled.rollout,
        scheduled.stable_version,
        match ids {
            IdShape::Sequential => "sequential",
            IdShape::Random => "random",
        },
    );
    println!();
    let mut head = format!(
        "{:>4}  {:<24} {:>10}",
        "step",
        "start",
        format!("{new} set")
    );
    for v in versions {
        let _ = write!(head, " {:>10}", format!("{v} seen"));
    }
    let _ = write!(
        head,
        " {:>10} {:>10}",
        format!("to {new}"),
        format!("back to {}", scheduled.stable_version)
    );
    println!("{head}");
    let count = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for (k, row) in rows.iter().enumerate() {
        let mut line = format!(
            "{:>4}  {:<24} {:>9.3}%",
            k + 1,
            format_time(row.start_ms),
            f64::from(row.configured_ppm) / 10_000.0
        );
        for n in &row.seen {
            let _ = write!(line, " {:>9.3}%", percent(*n, row.matched));
        }
        let _ = write!(
            line,
            " {:>10} {:>10}",
            count(row.moved_forward),
            count(row.moved_back)
        );
        if row.state.step != k + 1 || row.state.paused {
            let _ = write!(
                line,
                "  (at {}: step {} in force{})",
                format_time(row.at_ms),
                row.state.step,
                if row.state.paused { ", paused" } else { "" }
            );
        }
        if row.matched == 0 {
            line += "  (no user reached the rollout)";
        }
        println!("{line}");
    }
}

/// Text safe inside an SVG element or attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A step chart of the new version's share over time: the configured share as a line, the
/// observed share at each simulated moment as a point, one tick per step start.
fn chart(
    scheduled: &Scheduled<'_>,
    new_idx: usize,
    rows: &[StepRow],
    end_ms: u64,
    users: u64,
) -> String {
    const W: f64 = 760.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 24.0;
    const TOP: f64 = 56.0;
    const BOTTOM: f64 = 100.0;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let t0 = rows.first().map_or(0, |r| r.start_ms);
    let span = end_ms.saturating_sub(t0).max(1) as f64;
    let x = |t: u64| LEFT + t.saturating_sub(t0) as f64 / span * pw;
    // Share as a fraction from 0 to 1.
    let y = |share: f64| TOP + (1.0 - share) * ph;
    let new = escape(scheduled.new_version);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">rollout {}: share of {new} over time</text>"#,
        escape(scheduled.rollout)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="42" fill="#555">{users} simulated users per step through the filter .wasm</text>"##
    );
    for pct in [0, 25, 50, 75, 100] {
        let yy = y(f64::from(pct) / 100.0);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{pct}%</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    let bottom = TOP + ph;
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{bottom}" x2="{:.1}" y2="{bottom}" stroke="#333"/>"##,
        LEFT + pw
    );
    // Labels say the time of day, with the date once the chart spans more than a day.
    let long = end_ms.saturating_sub(t0) >= 86_400_000;
    let mut last_label = f64::NEG_INFINITY;
    for row in rows {
        let xx = x(row.start_ms);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{bottom}" x2="{xx:.1}" y2="{:.1}" stroke="#333"/>"##,
            bottom + 5.0
        );
        // Steps closer than a line of text share the previous label.
        if xx - last_label >= 14.0 {
            let time = format_time(row.start_ms);
            let label = if long {
                time.get(5..16).unwrap_or(&time).replace('T', " ")
            } else {
                time.get(11..16).unwrap_or(&time).to_owned()
            };
            let _ = writeln!(
                s,
                r#"<text transform="translate({xx:.1},{:.1}) rotate(-45)" text-anchor="end">{label}</text>"#,
                bottom + 16.0
            );
            last_label = xx;
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">step starts (UTC), from {}</text>"##,
        LEFT + pw / 2.0,
        H - 12.0,
        format_time(t0).get(..10).unwrap_or_default()
    );
    // The configured share: flat through each step, a jump at the next step's start.
    let mut path = String::new();
    for (k, row) in rows.iter().enumerate() {
        let yy = y(f64::from(row.configured_ppm) / 1_000_000.0);
        let until = rows.get(k + 1).map_or(end_ms, |next| next.start_ms);
        if k == 0 {
            let _ = write!(path, "M {:.1} {yy:.1}", x(row.start_ms));
        } else {
            let _ = write!(path, " V {yy:.1}");
        }
        let _ = write!(path, " H {:.1}", x(until));
    }
    let _ = writeln!(
        s,
        r##"<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##
    );
    for (k, row) in rows.iter().enumerate() {
        let seen = row.seen.get(new_idx).copied().unwrap_or(0);
        let observed = percent(seen, row.matched);
        let _ = writeln!(
            s,
            r##"<circle class="observed" cx="{:.1}" cy="{:.1}" r="4" fill="#d62728"><title>step {}: {new} set {}{}, seen by {observed:.3}% of {} users</title></circle>"##,
            x(row.at_ms),
            y(observed / 100.0),
            k + 1,
            ppm_text(row.configured_ppm),
            if row.state.paused { " (paused)" } else { "" },
            row.matched
        );
    }
    // The legend beside the title, where no share can reach.
    let lx = LEFT + pw - 100.0;
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" y1="20" x2="{:.1}" y2="20" stroke="#1f77b4" stroke-width="2"/><text x="{:.1}" y="24">configured</text>"##,
        lx + 24.0,
        lx + 30.0
    );
    let _ = writeln!(
        s,
        r##"<circle cx="{:.1}" cy="38" r="4" fill="#d62728"/><text x="{:.1}" y="42">observed</text>"##,
        lx + 12.0,
        lx + 30.0
    );
    s.push_str("</svg>\n");
    s
}
