//! `rollout diff OLD NEW`: who moves if a config change is merged. Both configs decide the same
//! population natively (the core, as every host runs it), and each rollout and flag gets its
//! move matrix, old value -> new value; changes that reshuffle users are named in words.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use rollout_core::{Config, HostInputs, RequestFacts, Source, format_time};
use serde::Serialize;
use serde_json::Value;

use crate::{IdShape, at_or_now, parse_config, read_config, user_id};

/// The label of a user a config does not send to the rollout (or that has no such flag).
const ABSENT: &str = "-";

/// The arguments of `rollout diff`.
#[derive(clap::Args)]
pub(crate) struct DiffArgs {
    /// The config in force now (JSON).
    old: PathBuf,
    /// The config proposed (JSON).
    new: PathBuf,
    /// How many synthetic users (user-0, user-1, ..., as `simulate` names them).
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// A file of user ids, one per line, instead of synthetic users.
    #[arg(long, value_name = "FILE", conflicts_with = "users")]
    ids: Option<PathBuf>,
    /// The time both configs decide at, RFC 3339 (for schedules); default: now.
    #[arg(long)]
    at: Option<String>,
    /// Exit 1 when any rollout or flag moves more than this percentage of users.
    #[arg(long, value_name = "PCT")]
    max_moved: Option<f64>,
    /// A request header every user sends, `name: value` (for rules); repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Also compare the schedules step by step: at the start of every step of either config,
    /// the users whose version differs.
    #[arg(long)]
    schedule: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// One cell of a move matrix.
#[derive(Serialize)]
struct Cell {
    from: String,
    to: String,
    users: u64,
    percent: f64,
}

/// A rollout's or flag's comparison.
#[derive(Serialize)]
struct Item {
    name: String,
    /// `both`, `added` (only in NEW) or `removed` (only in OLD).
    status: &'static str,
    /// The request each user sent: `host` and `path` (a rollout's own match, OLD's first).
    request: String,
    moved: u64,
    moved_percent: f64,
    matrix: Vec<Cell>,
    /// Changes that reshuffle users, in words.
    notes: Vec<String>,
}

/// The whole comparison, which `--json` prints as is.
#[derive(Serialize)]
struct Report {
    old: String,
    new: String,
    at: String,
    users: u64,
    population: String,
    notes: Vec<String>,
    rollouts: Vec<Item>,
    flags: Vec<Item>,
    /// With `--schedule`: each scheduled rollout compared step by step.
    #[serde(skip_serializing_if = "Option::is_none")]
    schedules: Option<Vec<ScheduleDiff>>,
    max_moved_percent: Option<f64>,
    /// `rollout NAME` or `flag NAME` for each item over `--max-moved`.
    over_limit: Vec<String>,
}

/// Runs `rollout diff`: exit 0, 1 when over `--max-moved`, 2 when a config is invalid.
pub(crate) fn diff(args: &DiffArgs) -> Result<ExitCode> {
    if let Some(pct) = args.max_moved
        && !(0.0..=100.0).contains(&pct)
    {
        bail!("--max-moved {pct} is not a percentage from 0 to 100");
    }
    let now_ms = at_or_now(args.at.as_deref())?;
    let (old_name, old_bytes) = read_config(Some(&args.old))?;
    let (new_name, new_bytes) = read_config(Some(&args.new))?;
    // Both are checked before either is refused, so one run shows every error.
    let old = parse_config(&old_name, &old_bytes);
    let new = parse_config(&new_name, &new_bytes);
    let (Some(old), Some(new)) = (old, new) else {
        return Ok(ExitCode::from(2));
    };
    // Validated configs are JSON objects; the raw form holds what Config does not expose
    // (salts, matches).
    let old_raw: Value = serde_json::from_slice(&old_bytes).context("reading OLD as JSON")?;
    let new_raw: Value = serde_json::from_slice(&new_bytes).context("reading NEW as JSON")?;
    let (ids, population) = population(args)?;
    let extra = args
        .headers
        .iter()
        .map(|h| crate::parse_header(h))
        .collect::<Result<Vec<_>>>()?;
    let sides = [
        Side {
            config: &old,
            raw: &old_raw,
        },
        Side {
            config: &new,
            raw: &new_raw,
        },
    ];
    let mut notes = Vec::new();
    let (old_keys, new_keys) = (key_names(&old), key_names(&new));
    if old_keys != new_keys {
        notes.push(format!(
            "user_key changed ({} -> {}): a user whose new key differs from the old one is \
             reshuffled, everyone if it is another id (this population carries the same id in \
             both)",
            old_keys.join(", "),
            new_keys.join(", ")
        ));
    }
    let rollouts = union(old.rollout_names(), new.rollout_names())
        .into_iter()
        .map(|name| rollout_item(&sides, &name, &ids, &extra, now_ms))
        .collect::<Vec<_>>();
    let flags = union(
        old.flag_values().map(|(f, _)| f),
        new.flag_values().map(|(f, _)| f),
    )
    .into_iter()
    .map(|name| flag_item(&sides, &name, &ids, &extra, now_ms))
    .collect::<Vec<_>>();
    let over_limit: Vec<String> = match args.max_moved {
        None => Vec::new(),
        Some(pct) => rollouts
            .iter()
            .map(|i| ("rollout", i))
            .chain(flags.iter().map(|i| ("flag", i)))
            .filter(|(_, i)| i.moved_percent > pct)
            .map(|(kind, i)| format!("{kind} {}", i.name))
            .collect(),
    };
    let report = Report {
        old: old_name,
        new: new_name,
        at: format_time(now_ms),
        users: ids.len() as u64,
        population,
        notes,
        rollouts,
        flags,
        schedules: args.schedule.then(|| schedule_diffs(&sides, &ids, &extra)),
        max_moved_percent: args.max_moved,
        over_limit,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
        print_schedules(&report);
    }
    if let Some(pct) = report.max_moved_percent {
        for what in &report.over_limit {
            eprintln!("{what} moves more than --max-moved {pct}% of users");
        }
    }
    Ok(if report.over_limit.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One config of the pair, validated and raw.
struct Side<'a> {
    config: &'a Config,
    raw: &'a Value,
}

/// The user ids, and how they were made, in words.
fn population(args: &DiffArgs) -> Result<(Vec<String>, String)> {
    match &args.ids {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --ids {}", path.display()))?;
            let ids: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            if ids.is_empty() {
                bail!("--ids {}: no user id in the file", path.display());
            }
            Ok((ids, format!("ids from {}", path.display())))
        }
        None => {
            if args.users == 0 {
                bail!("--users 0: there is nobody to compare");
            }
            let ids = (0..args.users)
                .map(|i| user_id(IdShape::Sequential, i))
                .collect();
            Ok((ids, "synthetic (user-0, user-1, ...)".to_owned()))
        }
    }
}

/// The user_key sources of a config, as the config spells them.
fn key_names(config: &Config) -> Vec<String> {
    config
        .key_sources()
        .iter()
        .map(|s| match s {
            Source::Header(h) => format!("header:{h}"),
            Source::Cookie(c) => format!("cookie:{c}"),
            Source::Key => "key".to_owned(),
        })
        .collect()
}

/// Names from both configs: OLD's order, then those only NEW has.
fn union<'a>(
    old: impl Iterator<Item = &'a str>,
    new: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut out: Vec<String> = old.map(str::to_owned).collect();
    for name in new {
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    out
}

/// A request for `id`: `base`, and the id where each config reads its key first (the same
/// person, whichever source a config reads).
fn user_request(base: &[(String, String)], sides: &[Side<'_>], id: &str) -> Vec<(String, String)> {
    let mut request = base.to_vec();
    let mut cookies: Vec<String> = Vec::new();
    for side in sides {
        match side.config.key_sources().first() {
            Some(Source::Header(name)) if !request.iter().any(|(k, _)| k == name) => {
                request.push((name.clone(), id.to_owned()));
            }
            Some(Source::Cookie(name)) => {
                let pair = format!("{name}={id}");
                if !cookies.contains(&pair) {
                    cookies.push(pair);
                }
            }
            _ => {}
        }
    }
    if !cookies.is_empty() {
        request.push(("cookie".to_owned(), cookies.join("; ")));
    }
    request
}

/// The entry `name` of a config section (`rollouts`, `flags`).
fn raw_entry<'a>(raw: &'a Value, section: &str, name: &str) -> Option<&'a Value> {
    raw.get(section)?.get(name)
}

/// A rollout's or flag's salt: its `salt`, else its name.
fn salt(entry: &Value, name: &str) -> String {
    entry
        .get("salt")
        .and_then(Value::as_str)
        .unwrap_or(name)
        .to_owned()
}

/// The names in a list of `{name, ...}` objects (versions, variants).
fn names(entry: &Value, field: &str) -> Vec<String> {
    entry
        .get(field)
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The request that reaches a rollout: its first host and its path prefix (OLD's match if it
/// has the rollout), then the `-H` headers.
fn rollout_base(
    sides: &[Side<'_>],
    name: &str,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    let matcher = sides
        .iter()
        .find_map(|s| raw_entry(s.raw, "rollouts", name))
        .and_then(|r| r.get("match"));
    let host = matcher
        .and_then(|m| m.get("hosts"))
        .and_then(|h| h.get(0))
        .and_then(Value::as_str)
        .unwrap_or("example.com");
    let path = matcher
        .and_then(|m| m.get("path_prefix"))
        .and_then(Value::as_str)
        .unwrap_or("/");
    let mut base = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":authority".to_owned(), host.to_owned()),
        (":path".to_owned(), path.to_owned()),
    ];
    base.extend(extra.iter().cloned());
    base
}

/// Counts the old -> new value of every user into a matrix, and the users who moved. With
/// `absent_moves` false, gaining or losing a value ([`ABSENT`] on one side) is no move: a
/// flag added or removed changes no user's value that the header carried.
fn tally(
    ids: &[String],
    absent_moves: bool,
    mut value: impl FnMut(&str) -> (String, String),
) -> (BTreeMap<(String, String), u64>, u64) {
    let mut matrix: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut moved = 0;
    for id in ids {
        let (from, to) = value(id);
        if from != to && (absent_moves || (from != ABSENT && to != ABSENT)) {
            moved += 1;
        }
        *matrix.entry((from, to)).or_default() += 1;
    }
    (matrix, moved)
}

/// Assembles an item from its tally.
fn item(
    name: &str,
    request: &[(String, String)],
    present: (bool, bool),
    tallied: (BTreeMap<(String, String), u64>, u64),
    notes: Vec<String>,
    total: usize,
) -> Item {
    let total = total as u64;
    let (matrix, moved) = tallied;
    Item {
        name: name.to_owned(),
        status: match present {
            (true, false) => "removed",
            (false, true) => "added",
            _ => "both",
        },
        request: format!(
            "{}{}",
            request
                .header(":authority")
                .map(String::from_utf8_lossy)
                .unwrap_or_default(),
            request
                .header(":path")
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
        ),
        moved,
        moved_percent: crate::percent(moved, total),
        matrix: matrix
            .into_iter()
            .map(|((from, to), users)| Cell {
                from,
                to,
                users,
                percent: crate::percent(users, total),
            })
            .collect(),
        notes,
    }
}

/// Notes on a changed salt and on renamed, removed or added values.
fn value_notes(old: &Value, new: &Value, name: &str, field: &str, kind: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let (old_salt, new_salt) = (salt(old, name), salt(new, name));
    if old_salt != new_salt {
        notes.push(format!(
            "salt changed ({old_salt:?} -> {new_salt:?}): reshuffles everyone"
        ));
    }
    let (old_names, new_names) = (names(old, field), names(new, field));
    let gone: Vec<&String> = old_names
        .iter()
        .filter(|n| !new_names.contains(n))
        .collect();
    let came: Vec<&String> = new_names
        .iter()
        .filter(|n| !old_names.contains(n))
        .collect();
    match (gone.as_slice(), came.as_slice()) {
        ([], []) => {}
        ([a], [b]) => notes.push(format!(
            "{kind} {a} renamed to {b}? A {kind}'s name is hashed: its users are drawn anew \
             (reshuffles {a}'s users and takes some from the others)"
        )),
        _ => {
            for a in gone {
                notes.push(format!("{kind} {a} removed: its users move to the others"));
            }
            for b in came {
                notes.push(format!("{kind} {b} added"));
            }
        }
    }
    notes
}

fn rollout_item(
    sides: &[Side<'_>; 2],
    name: &str,
    ids: &[String],
    extra: &[(String, String)],
    now_ms: u64,
) -> Item {
    let base = rollout_base(sides, name, extra);
    let entries = sides.each_ref().map(|s| raw_entry(s.raw, "rollouts", name));
    let present = (entries[0].is_some(), entries[1].is_some());
    let mut notes = match entries {
        [Some(old), Some(new)] => {
            let mut notes = value_notes(old, new, name, "versions", "version");
            let stable = |e: &Value| e.get("stable").and_then(Value::as_str).map(str::to_owned);
            if stable(old) != stable(new) {
                notes.push("stable version changed".to_owned());
            }
            if old.get("match") != new.get("match") {
                notes.push("match changed: other requests reach this rollout".to_owned());
            }
            notes
        }
        [Some(_), None] => vec!["removed: its users reach another rollout or none".to_owned()],
        _ => vec!["added".to_owned()],
    };
    let tallied = rollout_tally(sides, name, ids, &base, now_ms);
    if present == (true, true)
        && tallied
            .0
            .keys()
            .all(|(from, to)| from == ABSENT && to == ABSENT)
    {
        notes.push("no user of this population reaches it (try -H for its rules)".to_owned());
    }
    item(name, &base, present, tallied, notes, ids.len())
}

/// The version of every user in one rollout under each config at `now_ms`, as a matrix.
fn rollout_tally(
    sides: &[Side<'_>; 2],
    name: &str,
    ids: &[String],
    base: &[(String, String)],
    now_ms: u64,
) -> (BTreeMap<(String, String), u64>, u64) {
    let decide = |config: &Config, request: &[(String, String)]| -> String {
        let inputs = HostInputs {
            now_ms: Some(now_ms),
            ..HostInputs::default()
        };
        match config.decide(request, inputs).rollout {
            Some(r) if r.rollout == name => r.version.to_owned(),
            _ => ABSENT.to_owned(),
        }
    };
    tally(ids, true, |id| {
        let request = user_request(base, sides, id);
        (
            decide(sides[0].config, &request),
            decide(sides[1].config, &request),
        )
    })
}

/// Where one config's schedule stands at a moment of the comparison.
#[derive(Serialize)]
struct StepState {
    step: usize,
    steps: usize,
    /// The new version's share, in parts per million.
    canary_ppm: u32,
}

/// One moment of a schedule comparison: the start of a step of either config.
#[derive(Serialize)]
struct StepRow {
    at: String,
    /// `None` when that config has no schedule for the rollout.
    old: Option<StepState>,
    new: Option<StepState>,
    /// Users whose version differs between the configs at that moment.
    moved: u64,
    moved_percent: f64,
}

/// A rollout's schedules compared step by step.
#[derive(Serialize)]
struct ScheduleDiff {
    rollout: String,
    steps: Vec<StepRow>,
}

/// For each rollout with a schedule in either config: at the start of every step of either
/// (and once before the first), the state of each schedule and the users whose version
/// differs between the two configs at that moment.
fn schedule_diffs(
    sides: &[Side<'_>; 2],
    ids: &[String],
    extra: &[(String, String)],
) -> Vec<ScheduleDiff> {
    let names = union(
        sides[0].config.rollout_names(),
        sides[1].config.rollout_names(),
    );
    names
        .into_iter()
        .filter_map(|name| {
            let starts = sides.each_ref().map(|s| s.config.step_starts(&name));
            if starts.iter().all(Option::is_none) {
                return None;
            }
            let mut moments: Vec<u64> = starts.iter().flatten().flatten().copied().collect();
            moments.sort_unstable();
            moments.dedup();
            // A moment before either schedule starts shows where users stand until then.
            if let Some(first) = moments.first().copied() {
                moments.insert(0, first.saturating_sub(1));
            }
            let base = rollout_base(sides, &name, extra);
            let steps = moments
                .into_iter()
                .map(|at| {
                    let state = |side: &Side<'_>| {
                        side.config.schedule_at(&name, Some(at)).map(|s| StepState {
                            step: s.step,
                            steps: s.steps,
                            canary_ppm: s.canary_ppm,
                        })
                    };
                    let (_, moved) = rollout_tally(sides, &name, ids, &base, at);
                    StepRow {
                        at: format_time(at),
                        old: state(&sides[0]),
                        new: state(&sides[1]),
                        moved,
                        moved_percent: crate::percent(moved, ids.len() as u64),
                    }
                })
                .collect();
            Some(ScheduleDiff {
                rollout: name,
                steps,
            })
        })
        .collect()
}

/// A schedule's state in a few words (`step 2/4, 10%`).
fn step_words(state: Option<&StepState>) -> String {
    match state {
        None => "no schedule".to_owned(),
        Some(s) => format!(
            "step {}/{}, {}",
            s.step,
            s.steps,
            crate::ppm_text(s.canary_ppm)
        ),
    }
}

fn flag_item(
    sides: &[Side<'_>; 2],
    name: &str,
    ids: &[String],
    extra: &[(String, String)],
    now_ms: u64,
) -> Item {
    let mut base = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":authority".to_owned(), "example.com".to_owned()),
        (":path".to_owned(), "/".to_owned()),
    ];
    base.extend(extra.iter().cloned());
    let entries = sides.each_ref().map(|s| raw_entry(s.raw, "flags", name));
    let present = (entries[0].is_some(), entries[1].is_some());
    let notes = match entries {
        [Some(old), Some(new)] => {
            let mut notes = value_notes(old, new, name, "variants", "variant");
            let default = |e: &Value| e.get("default").and_then(Value::as_str).map(str::to_owned);
            if default(old) != default(new) {
                notes.push("default value changed".to_owned());
            }
            notes
        }
        [Some(_), None] => {
            vec!["removed: it leaves the flags header (not counted as a move)".to_owned()]
        }
        _ => vec!["added: it joins the flags header (not counted as a move)".to_owned()],
    };
    let decide = |config: &Config, request: &[(String, String)]| -> String {
        let inputs = HostInputs {
            now_ms: Some(now_ms),
            ..HostInputs::default()
        };
        config
            .decide(request, inputs)
            .flags
            .iter()
            .find(|f| f.flag == name)
            .map_or_else(|| ABSENT.to_owned(), |f| f.value.to_owned())
    };
    let tallied = tally(ids, false, |id| {
        let request = user_request(&base, sides, id);
        (
            decide(sides[0].config, &request),
            decide(sides[1].config, &request),
        )
    });
    item(name, &base, present, tallied, notes, ids.len())
}

fn print_schedules(report: &Report) {
    for diff in report.schedules.iter().flatten() {
        println!();
        println!("schedule of {}, step by step (old | new):", diff.rollout);
        for row in &diff.steps {
            println!(
                "  {:<24} {:<20} | {:<20} {:>9} differ {:>7.2}%",
                row.at,
                step_words(row.old.as_ref()),
                step_words(row.new.as_ref()),
                row.moved,
                row.moved_percent
            );
        }
    }
}

fn print_report(report: &Report) {
    println!("old: {}", report.old);
    println!("new: {}", report.new);
    println!("time: {}", report.at);
    println!("users: {} {}", report.users, report.population);
    for note in &report.notes {
        println!("note: {note}");
    }
    for (kind, items) in [("rollout", &report.rollouts), ("flag", &report.flags)] {
        for item in items {
            println!();
            let status = match item.status {
                "both" => String::new(),
                other => format!(" ({other})"),
            };
            if item.moved == 0 {
                println!("{kind} {}{status}: nobody moves", item.name);
            } else {
                println!(
                    "{kind} {}{status}: {} of {} users move ({:.2}%)",
                    item.name, item.moved, report.users, item.moved_percent
                );
            }
            if kind == "rollout" {
                println!("  request: {}", item.request);
            }
            for note in &item.notes {
                println!("  note: {note}");
            }
            for cell in &item.matrix {
                let arrow = if cell.from == cell.to { "  " } else { "->" };
                println!(
                    "  {:>12} {arrow} {:<12} {:>9} {:>8.2}%",
                    cell.from, cell.to, cell.users, cell.percent
                );
            }
        }
    }
}
