//! `rollout`: validate a rollout config, explain one request's decision, and simulate users
//! through the very filter .wasm that Envoy loads, at a chosen time or along a schedule; mint
//! signed override tokens for testers; preview who moves between two configs; run any
//! proxy-wasm filter through a scenario as Envoy would.

mod diff;
mod lint;
mod locate;
mod run;
mod sign;
mod timeline;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use host_test::{Exchange, FilterModule, Headers, Vm, VmOptions};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use rollout_core::{
    Config, HeaderNames, HostInputs, ScheduleState, Source, format_time, parse_time,
};

/// The example config that `simulate` and `explain` use when no config is given.
const EXAMPLE_CONFIG: &str = include_str!("../../examples/checkout.json");

#[derive(Parser)]
#[command(
    name = "rollout",
    version,
    about = "Test rollout configs against the real filter .wasm"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a config and print every error with its path. A plugin configuration with a
    /// `config_source` is checked by the filter .wasm itself (its fields and its fallback).
    Validate {
        /// The config file (JSON).
        config: PathBuf,
        /// The filter .wasm that checks a plugin configuration with `config_source`
        /// (default: as for explain).
        #[arg(long)]
        filter: Option<PathBuf>,
    },
    /// Decide one request: the decision and its reasons, and the headers the filter sets.
    Explain {
        /// The config file (JSON); the built-in example if absent.
        config: Option<PathBuf>,
        #[command(flatten)]
        request: RequestArgs,
        /// The time of the request, RFC 3339 (`2026-11-23T10:25:00Z`); default: now.
        #[arg(long)]
        at: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send N synthetic users through the filter and print the split beside the weights.
    Simulate {
        /// The config file (JSON); the built-in example if absent.
        config: Option<PathBuf>,
        /// How many distinct users.
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        /// User ids: `sequential` (user-1, user-2, ...) or `random` (hex).
        #[arg(long, default_value = "sequential")]
        ids: IdShape,
        /// Simulate the users at every step of the schedule of the rollout the requests
        /// match, and print the share and the users who moved at each step.
        #[arg(long)]
        timeline: bool,
        /// With --timeline: also write an SVG chart of the new version's share over time.
        #[arg(long, requires = "timeline", value_name = "FILE")]
        svg: Option<PathBuf>,
        /// The time of the requests, RFC 3339; default: now.
        #[arg(long, conflicts_with = "timeline")]
        at: Option<String>,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Mint a signed override token: stdout gets the token alone, stderr its expiry and how
    /// to send it. The secret comes from --secret-file, $ROLLOUT_OVERRIDE_SECRET or the
    /// config's overrides.keys, never from the command line.
    Sign(sign::SignArgs),
    /// Print a fresh secret for overrides.keys: 32 random bytes as base64url.
    Keygen,
    /// Who moves if NEW replaces OLD: per rollout and flag, the users whose value changes
    /// (old -> new), decided by the core for a population of users. Exit 1 past
    /// --max-moved, 2 when a config is invalid.
    Diff(diff::DiffArgs),
    /// Run any proxy-wasm filter through a scenario (plugin configuration, clusters, the
    /// upstream's answer, requests) as one Envoy listener would, and print what the client
    /// and the upstream got, the filter's logs and its metrics as JSON.
    Run(run::RunArgs),
    /// Warn about flags and rollouts due for clean-up: expired, old, fully on or off,
    /// switched off for long, finished on a version other than stable. Exit 1 with
    /// warnings, 2 when the config is invalid.
    Lint(lint::LintArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IdShape {
    Sequential,
    Random,
}

#[derive(clap::Args)]
struct RequestArgs {
    /// The filter .wasm. Default: $ROLLOUT_FILTER, else rollout_filter.wasm next to this
    /// executable, else the build tree it was built in.
    #[arg(long)]
    filter: Option<PathBuf>,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Request host (:authority).
    #[arg(long, default_value = "example.com")]
    host: String,
    /// A request header, `name: value`; repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

impl RequestArgs {
    fn headers(&self) -> Result<Vec<(String, String)>> {
        let mut out = vec![
            (":method".to_owned(), "GET".to_owned()),
            (":authority".to_owned(), self.host.clone()),
            (":path".to_owned(), self.path.clone()),
        ];
        for h in &self.headers {
            out.push(parse_header(h)?);
        }
        Ok(out)
    }

    fn filter(&self) -> Result<FilterModule> {
        load_filter(&self.located()?)
    }

    /// The filter .wasm this request runs through, and how it was found.
    fn located(&self) -> Result<locate::Found> {
        locate::find(self.filter.as_deref())
    }
}

/// A `-H name: value` argument, the name lowercased as the hosts see it.
fn parse_header(h: &str) -> Result<(String, String)> {
    let Some((name, value)) = h.split_once(':') else {
        bail!("header {h:?} is not `name: value`");
    };
    Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
}

/// Compiles the filter found, naming where it came from if it is not a usable module.
fn load_filter(found: &locate::Found) -> Result<FilterModule> {
    FilterModule::from_file(&found.path).with_context(|| {
        format!(
            "loading the filter {} (from {}); build it with `cargo build --profile wasm -p \
             rollout-filter --target wasm32-wasip1`",
            found.path.display(),
            found.how
        )
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read_config(path: Option<&PathBuf>) -> Result<(String, Vec<u8>)> {
    match path {
        Some(p) => Ok((
            p.display().to_string(),
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )),
        None => Ok((
            "built-in example (examples/checkout.json)".to_owned(),
            EXAMPLE_CONFIG.as_bytes().to_vec(),
        )),
    }
}

/// Parses a config, printing every error; `None` if it is invalid.
fn parse_config(name: &str, bytes: &[u8]) -> Option<Config> {
    match Config::from_json(bytes) {
        Ok(config) => Some(config),
        Err(errors) => {
            eprintln!("{name}: {} error(s)", errors.len());
            for line in errors.lines("  ") {
                eprintln!("{line}");
            }
            if live_source(bytes).is_some() {
                eprintln!(
                    "({name} is a plugin configuration with config_source: `rollout validate` \
                     checks it; explain and simulate take a rollout config, such as its \
                     fallback or what the source serves)"
                );
            }
            None
        }
    }
}

/// A config's counts, as `validate` prints them.
fn counts(config: &Config) -> String {
    format!(
        "{} rollout(s), {} version(s), {} flag(s)",
        config.rollout_names().count(),
        config.n_slots(),
        config.flag_values().count()
    )
}

/// The `config_source` of a plugin configuration in the live form (an object with that
/// key, which is how the filter tells the two forms apart); `None` for a rollout config.
fn live_source(bytes: &[u8]) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    value.get("config_source").cloned()
}

/// Checks a plugin configuration with `config_source` by configuring the filter .wasm with
/// it: the parser Envoy runs, for `config_source`, `fallback` and `override_keys` alike, so
/// the CLI cannot drift from the filter. Makes no call to the source.
fn validate_live(
    name: &str,
    bytes: &[u8],
    source: &serde_json::Value,
    filter: Option<&Path>,
) -> Result<ExitCode> {
    let found = locate::find(filter)?;
    let module = load_filter(&found)?;
    let mut vm = module.start_vm(VmOptions::default())?;
    let accepted = vm.configure(bytes)?;
    let logs = vm.take_logs();
    if !accepted {
        let errors: Vec<&str> = logs
            .iter()
            .filter_map(|l| l.message.strip_prefix("rollout: config rejected: "))
            .collect();
        eprintln!(
            "{name}: {} error(s) (checked by {})",
            errors.len(),
            found.path.display()
        );
        for line in &errors {
            eprintln!("  {line}");
        }
        if errors.is_empty() {
            // Refused without an error line: show whatever the filter said.
            for l in &logs {
                eprintln!("  {}", l.message);
            }
        }
        return Ok(ExitCode::FAILURE);
    }
    let text = |key: &str| {
        source
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    };
    let cluster = text("cluster");
    let fallback = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("fallback").map(|f| f.to_string()))
        .map_or_else(|| Ok(Config::empty()), |f| Config::from_json(f.as_bytes()));
    let fallback = match fallback {
        Ok(config) => counts(&config),
        Err(_) => "refused natively, accepted by the filter".to_owned(),
    };
    println!(
        "{name}: ok (live source: cluster {cluster:?}, path {:?}; fallback: {fallback}; checked by {})",
        text("path"),
        found.path.display()
    );
    println!(
        "note: Envoy must have a cluster named {cluster:?}. `envoy --mode validate` does not \
         check that; a missing one shows at run time as `rollout: config source failing, ... \
         Envoy has no cluster named {cluster:?}`. The config the source serves is checked when \
         it arrives: validate that file too."
    );
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate { config, filter } => {
            let (name, bytes) = read_config(Some(&config))?;
            if let Some(source) = live_source(&bytes) {
                return validate_live(&name, &bytes, &source, filter.as_deref());
            }
            let Some(config) = parse_config(&name, &bytes) else {
                return Ok(ExitCode::FAILURE);
            };
            // The revision Envoy's rollout_config_info and Server-Timing name it by.
            println!(
                "{name}: ok ({}), revision {}",
                counts(&config),
                config.digest_text()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            config,
            request,
            at,
            json,
        } => {
            let now_ms = at_or_now(at.as_deref())?;
            let (name, bytes) = read_config(config.as_ref())?;
            let Some(config) = parse_config(&name, &bytes) else {
                return Ok(ExitCode::FAILURE);
            };
            explain(&config, &bytes, &request, now_ms, json)
        }
        Command::Simulate {
            config,
            users,
            ids,
            timeline,
            svg,
            at,
            request,
        } => {
            let (name, bytes) = read_config(config.as_ref())?;
            let Some(config) = parse_config(&name, &bytes) else {
                return Ok(ExitCode::FAILURE);
            };
            println!("config: {name}");
            if timeline {
                timeline::run(&config, &bytes, users, ids, &request, svg.as_deref())
            } else {
                let now_ms = at_or_now(at.as_deref())?;
                simulate(&config, &bytes, users, ids, &request, now_ms)
            }
        }
        Command::Sign(args) => sign::sign(&args, at_or_now(args.at.as_deref())?),
        Command::Keygen => sign::keygen(),
        Command::Diff(args) => diff::diff(&args),
        Command::Run(args) => run::run(&args),
        Command::Lint(args) => lint::lint(&args),
    }
}

/// The time `--at` gives, else the system clock, in Unix milliseconds.
fn at_or_now(at: Option<&str>) -> Result<u64> {
    if let Some(text) = at {
        return parse_time(text).with_context(|| format!("--at {text:?} is not an RFC 3339 time"));
    }
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    Ok(since.as_millis() as u64)
}

/// A VM of the filter whose virtual clock starts at `now_ms`, configured with `bytes`.
fn configured_vm(module: &FilterModule, bytes: &[u8], now_ms: u64) -> Result<Vm> {
    let start_time_ns = now_ms
        .checked_mul(1_000_000)
        .with_context(|| format!("{} is too far ahead for the VM clock", format_time(now_ms)))?;
    let mut vm = module.start_vm(VmOptions {
        start_time_ns,
        ..VmOptions::default()
    })?;
    if !vm.configure(bytes)? {
        bail!("the filter refused the config: {:?}", vm.take_logs());
    }
    Ok(vm)
}

/// A share in parts per million as a percentage, without trailing zeros (`12.5%`).
fn ppm_text(ppm: u32) -> String {
    format!("{}%", f64::from(ppm) / 10_000.0)
}

/// Where a rollout's schedule stands, in words.
fn schedule_words(state: &ScheduleState, new_version: &str) -> String {
    let mut out = if state.step == 0 {
        format!("not started (step 0 of {})", state.steps)
    } else {
        format!("step {} of {}", state.step, state.steps)
    };
    out += &format!(", {new_version} at {}", ppm_text(state.canary_ppm));
    match state.next_ms {
        Some(next) if state.step == 0 => out += &format!(", starts at {}", format_time(next)),
        Some(next) => out += &format!(", next step at {}", format_time(next)),
        None if state.paused => {}
        None => out += ", last step",
    }
    if state.paused {
        out += ", paused";
    }
    out
}

fn explain(
    config: &Config,
    bytes: &[u8],
    request: &RequestArgs,
    now_ms: u64,
    json: bool,
) -> Result<ExitCode> {
    let headers = request.headers()?;
    let inputs = HostInputs {
        now_ms: Some(now_ms),
        ..HostInputs::default()
    };
    let decision = config.decide(headers.as_slice(), inputs);
    let token = sign::token_view(config, bytes, &headers, &decision);
    let schedules = timeline::scheduled_rollouts(config, now_ms);
    let found = request.located()?;
    let module = load_filter(&found)?;
    let mut vm = configured_vm(&module, bytes, now_ms)?;
    let report = vm.exchange(&host_test::testing::exchange(&headers, &[]))?;
    // The native decision and the filter must agree on the contract headers.
    let mut expected = headers.clone();
    config.apply_request_contract(&decision, headers.as_slice(), &mut expected);
    let values = |list: &[(String, String)], name: &str| -> Vec<String> {
        list.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let agree = config
        .contract_names()
        .request
        .iter()
        .all(|name| values(&expected, name) == values(&report.upstream_request_headers, name));
    if json {
        let schedules: serde_json::Map<String, serde_json::Value> = schedules
            .iter()
            .map(|s| {
                let value = serde_json::json!({
                    "version": s.new_version,
                    "step": s.state.step,
                    "steps": s.state.steps,
                    "canary_ppm": s.state.canary_ppm,
                    "next": s.state.next_ms.map(format_time),
                    "paused": s.state.paused,
                });
                (s.rollout.to_owned(), value)
            })
            .collect();
        let out = serde_json::json!({
            "now": format_time(now_ms),
            "schedules": schedules,
            "decision": decision,
            "override_token": token,
            "filter": report,
            "filter_wasm": found.path.display().to_string(),
            "filter_agrees_with_core": agree,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("filter .wasm: {} ({})", found.path.display(), found.how);
        println!("time: {}", format_time(now_ms));
        for s in &schedules {
            println!(
                "schedule of {}: {}",
                s.rollout,
                schedule_words(&s.state, s.new_version)
            );
        }
        println!("key: {}", words(serde_json::to_value(decision.key)?));
        match decision.rollout {
            Some(r) => println!(
                "rollout {}: version {} ({})",
                r.rollout,
                r.version,
                words(serde_json::to_value(r.reason)?)
            ),
            None => println!("no rollout matches this request"),
        }
        for f in &decision.flags {
            println!(
                "flag {}: {} ({})",
                f.flag,
                f.value,
                words(serde_json::to_value(f.reason)?)
            );
        }
        if let Some(token) = &token {
            print_token(token, now_ms);
        }
        println!("filter .wasm set on the upstream request:");
        for (k, v) in &report.request_headers_set {
            println!("  {k}: {v}");
        }
        for k in &report.request_headers_removed {
            println!("  (removed) {k}");
        }
        println!("filter .wasm response headers to the client:");
        for (k, v) in &report.client_response_headers {
            println!("  {k}: {v}");
        }
        println!("filter agrees with core: {agree}");
    }
    Ok(if agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The override token of `explain`'s request, in words.
fn print_token(token: &sign::TokenView, now_ms: u64) {
    print!(
        "override token ({}): {}",
        token.carrier,
        token.status.as_str().replace('_', " ")
    );
    if let Some(key_id) = &token.key_id {
        print!(", key {key_id}");
    }
    if let Some(expires) = &token.expires {
        let when = parse_time(expires).map(|at| {
            if at > now_ms {
                format!("in {}", sign::span_words(at - now_ms))
            } else {
                format!("{} ago", sign::span_words(now_ms - at))
            }
        });
        print!(", expires {expires}");
        if let Some(when) = when {
            print!(" ({when})");
        }
    }
    println!();
    for c in &token.claims {
        let kind = match c.kind {
            rollout_core::token::ClaimKind::Version => "version",
            rollout_core::token::ClaimKind::Flag => "flag",
        };
        match &c.ignored {
            None => println!("  {kind} {}={}: applied", c.target, c.value),
            Some(why) => println!("  {kind} {}={}: ignored ({why})", c.target, c.value),
        }
    }
}

/// A user id of the requested shape.
fn user_id(shape: IdShape, i: u64) -> String {
    match shape {
        IdShape::Sequential => format!("user-{i}"),
        IdShape::Random => {
            // SplitMix64: distinct, random-looking ids without a dependency.
            let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        }
    }
}

/// The base request with a user's key where the config looks for it first.
fn user_headers(base: &[(String, String)], key_source: Option<&Source>, id: &str) -> Headers {
    let mut headers = host_test::headers(base);
    match key_source {
        Some(Source::Header(name)) => headers.push((name.clone(), id.as_bytes().to_vec())),
        Some(Source::Cookie(name)) => {
            headers.push(("cookie".to_owned(), format!("{name}={id}").into_bytes()))
        }
        _ => {}
    }
    headers
}

/// A progress bar on stderr with rate and time left, for runs long enough to want one.
/// indicatif draws nothing when stderr is not a terminal, so piped output stays clean.
fn progress_bar(total: u64) -> ProgressBar {
    if total < 1000 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template = "[{bar:50}] {percent:>3}% {human_pos}/{human_len} {rate} ETA {eta}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        // Whole requests per second: indicatif's own {per_sec} prints four decimals.
        let rate = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} req/s", state.per_sec());
        };
        bar.set_style(style.progress_chars("#>.").with_key("rate", rate));
    }
    bar
}

fn simulate(
    config: &Config,
    bytes: &[u8],
    users: u64,
    ids: IdShape,
    request: &RequestArgs,
    now_ms: u64,
) -> Result<ExitCode> {
    let base = request.headers()?;
    let key_source = config_key_source(config);
    let found = request.located()?;
    let module = load_filter(&found)?;
    let mut vm = configured_vm(&module, bytes, now_ms)?;
    let names = config.header_names().clone();
    let mut tally = Tally::default();
    let progress = progress_bar(users);
    let started = Instant::now();
    for i in 0..users {
        let report = vm.exchange(&Exchange {
            request_headers: user_headers(&base, key_source.as_ref(), &user_id(ids, i)),
            ..Exchange::default()
        })?;
        tally.count(&report.upstream_request_headers, &names);
        progress.inc(1);
    }
    progress.finish();
    let elapsed = started.elapsed();
    println!(
        "{users} users ({} ids) through {} in {:.2} s: {:.0} requests/s",
        match ids {
            IdShape::Sequential => "sequential",
            IdShape::Random => "random",
        },
        found.path.display(),
        elapsed.as_secs_f64(),
        users as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    if key_source.is_none() {
        println!("note: the config has no user_key, so every user is keyless");
    }
    print_versions(config, &tally, now_ms);
    print_flags(config, &tally, users);
    Ok(ExitCode::SUCCESS)
}

/// What the filter sent upstream for the simulated users, counted.
#[derive(Default)]
struct Tally {
    /// Users per `rollout/version`.
    versions: BTreeMap<String, u64>,
    /// Users per rollout.
    rollouts: BTreeMap<String, u64>,
    /// Users per (flag, value).
    flags: BTreeMap<(String, String), u64>,
}

impl Tally {
    /// Counts one request from the contract headers the upstream received.
    fn count(&mut self, upstream: &[(String, String)], names: &HeaderNames) {
        let text = |name: &str| {
            upstream
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        if let (Some(r), Some(v)) = (text(&names.rollout), text(&names.version)) {
            *self.rollouts.entry(r.to_owned()).or_default() += 1;
            *self.versions.entry(format!("{r}/{v}")).or_default() += 1;
        }
        for pair in text(&names.flags)
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let (flag, value) = pair.split_once('=').unwrap_or((pair, ""));
            *self
                .flags
                .entry((flag.to_owned(), value.to_owned()))
                .or_default() += 1;
        }
    }
}

/// The observed split per rollout version beside the share in force at `now_ms` (the
/// weights, or what a schedule or an abort makes of them).
fn print_versions(config: &Config, tally: &Tally, now_ms: u64) {
    let (rollouts, versions) = (&tally.rollouts, &tally.versions);
    println!();
    println!("time: {}", format_time(now_ms));
    println!(
        "{:<32} {:>10} {:>9} {:>9}",
        "rollout/version", "users", "observed", "config"
    );
    let shares = config.shares_at(Some(now_ms), &[]);
    for ((rollout, version), ppm) in config.versions().zip(shares) {
        let seen = rollouts.get(rollout).copied().unwrap_or(0);
        let n = versions
            .get(&format!("{rollout}/{version}"))
            .copied()
            .unwrap_or(0);
        println!(
            "{:<32} {:>10} {:>8.3}% {:>8.3}%",
            format!("{rollout}/{version}"),
            n,
            percent(n, seen),
            f64::from(ppm) / 10_000.0
        );
    }
    if rollouts.is_empty() {
        println!("(no request matched a rollout: try --host and --path)");
    }
}

/// The observed share of each flag value beside the configured one.
fn print_flags(config: &Config, tally: &Tally, users: u64) {
    let flags = &tally.flags;
    if config.flag_values().next().is_some() {
        println!();
        println!(
            "{:<32} {:>10} {:>9} {:>9}",
            "flag=value", "users", "observed", "config"
        );
        for (flag, values) in config.flag_values() {
            let (ppm, variants) = config.flag_split(flag).unwrap_or_default();
            let variant_total: u64 = variants.iter().map(|(_, w)| u64::from(*w)).sum();
            for (idx, value) in values.iter().enumerate() {
                let n = flags
                    .get(&(flag.to_owned(), (*value).to_owned()))
                    .copied()
                    .unwrap_or(0);
                // Configured share before rules and lists: the default gets what the
                // percentage leaves, each variant its weight of the rest.
                let configured = if idx == 0 {
                    100.0 - ppm as f64 / 10_000.0
                } else {
                    let w = variants
                        .iter()
                        .find(|(n, _)| n == value)
                        .map_or(0, |(_, w)| *w);
                    ppm as f64 / 10_000.0 * percent(u64::from(w), variant_total) / 100.0
                };
                println!(
                    "{:<32} {:>10} {:>8.3}% {:>8.3}%",
                    format!("{flag}={value}"),
                    n,
                    percent(n, users),
                    configured
                );
            }
        }
        println!(
            "(config shares ignore rules and allow/deny lists, which the simulated users do not hit)"
        );
    }
}

/// A serialized reason or key status as text: `"no_key_stable"` -> `no_key_stable`,
/// `{"rule":0}` -> `rule 0`. Names stay as the docs and `--json` spell them, so a user can
/// look up what they read.
fn words(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s,
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| format!("{k} {}", words(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn config_key_source(config: &Config) -> Option<Source> {
    config.key_sources().first().cloned()
}

fn percent(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}
