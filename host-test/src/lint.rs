//! `rollout lint CONFIG`: warnings about flags and rollouts that are done and should be
//! cleaned up (expired, old, fully on or off, switched off for long, a rollout finished on a
//! version other than stable), each with its config path. Exit 0 clean, 1 with warnings, 2
//! for an invalid config, so CI can gate on it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use rollout_core::{Config, FlagShape, Lifecycle, RolloutShape, format_time};
use serde::Serialize;

use crate::{at_or_now, parse_config, read_config};

const DAY_MS: u64 = 86_400_000;
const FULL_PPM: u32 = 1_000_000;
/// A kill switch is for an incident: one still pulled this many days after the flag was
/// created (or with no `created` to tell) has most likely become the flag's real state.
pub(crate) const DISABLED_DAYS: u64 = 30;

/// The arguments of `rollout lint`.
#[derive(clap::Args)]
pub(crate) struct LintArgs {
    /// The config file (JSON).
    config: PathBuf,
    /// The time to judge at, RFC 3339 (`2026-11-24T12:00:00Z`); default: now.
    #[arg(long)]
    now: Option<String>,
    /// Warn about a flag whose `created` is more than this many days before --now (unless
    /// its `expires` is still ahead).
    #[arg(long, default_value_t = 90)]
    max_age_days: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// One warning.
#[derive(Serialize)]
struct Warning {
    /// The config path it is about (`flags.new-cart.expires`).
    path: String,
    /// Which check: `expired`, `old`, `fully_on`, `fully_off`, `disabled`, `finished`.
    check: &'static str,
    message: String,
    /// The flag's or rollout's `owner`, to ask.
    owner: Option<String>,
}

/// What `--json` prints.
#[derive(Serialize)]
struct Report {
    config: String,
    now: String,
    max_age_days: u64,
    warnings: Vec<Warning>,
}

/// Runs `rollout lint`.
pub(crate) fn lint(args: &LintArgs) -> Result<ExitCode> {
    let now_ms = at_or_now(args.now.as_deref())?;
    let (name, bytes) = read_config(Some(&args.config))?;
    let Some(config) = parse_config(&name, &bytes) else {
        return Ok(ExitCode::from(2));
    };
    let warnings = check(&config, now_ms, args.max_age_days);
    let code = if warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if args.json {
        let report = Report {
            config: name,
            now: format_time(now_ms),
            max_age_days: args.max_age_days,
            warnings,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(code);
    }
    for w in &warnings {
        let owner = w
            .owner
            .as_deref()
            .map_or(String::new(), |o| format!(" (owner: {o})"));
        println!("{}: {} [{}]{owner}", w.path, w.message, w.check);
    }
    match warnings.len() {
        0 => println!("{name}: no warnings at {}", format_time(now_ms)),
        n => println!("{name}: {n} warning(s) at {}", format_time(now_ms)),
    }
    Ok(code)
}

/// Every warning for `config` at `now_ms`: flags, then rollouts, each by name.
fn check(config: &Config, now_ms: u64, max_age_days: u64) -> Vec<Warning> {
    let mut out = Vec::new();
    for flag in config.flag_shapes() {
        check_flag(&flag, now_ms, max_age_days, &mut out);
    }
    let mut rollouts: Vec<RolloutShape> = config.rollout_shapes().collect();
    rollouts.sort_by(|a, b| a.name.cmp(b.name));
    for rollout in &rollouts {
        check_rollout(config, rollout, now_ms, &mut out);
    }
    out
}

/// `2026-11-24` for a midnight, the full time otherwise.
fn when(ms: u64) -> String {
    let text = format_time(ms);
    match text.strip_suffix("T00:00:00Z") {
        Some(date) => date.to_owned(),
        None => text,
    }
}

fn days(ms: u64) -> u64 {
    ms / DAY_MS
}

fn warning(path: String, check: &'static str, message: String, life: &Lifecycle) -> Warning {
    Warning {
        path,
        check,
        message,
        owner: life.owner.clone(),
    }
}

/// `expires` passed, for flags and rollouts alike.
fn expired(at: &str, what: &str, life: &Lifecycle, now_ms: u64) -> Option<Warning> {
    let expires = life.expires_ms?;
    (expires <= now_ms).then(|| {
        warning(
            format!("{at}.expires"),
            "expired",
            format!(
                "expired {} ({} days ago): {what}",
                when(expires),
                days(now_ms - expires)
            ),
            life,
        )
    })
}

fn check_flag(flag: &FlagShape, now_ms: u64, max_age_days: u64, out: &mut Vec<Warning>) {
    let at = format!("flags.{}", flag.name);
    let life = flag.lifecycle;
    out.extend(expired(
        &at,
        "remove the flag from the config and its branches from the code",
        life,
        now_ms,
    ));
    let age = life.created_ms.map(|c| now_ms.saturating_sub(c));
    // An `expires` still ahead is a plan for the flag's end, which beats the default age.
    let planned = life.expires_ms.is_some_and(|e| e > now_ms);
    if let (Some(age), Some(created)) = (age, life.created_ms)
        && age > max_age_days.saturating_mul(DAY_MS)
        && !planned
    {
        out.push(warning(
            format!("{at}.created"),
            "old",
            format!(
                "created {} ({} days ago, more than {max_age_days}) with no expires ahead: \
                 finish it, or set expires",
                when(created),
                days(age)
            ),
            life,
        ));
    }
    if !flag.enabled {
        let long = age.is_none_or(|a| a >= DISABLED_DAYS * DAY_MS);
        if long {
            let since = life.created_ms.map_or_else(
                || "no created date tells since when".to_owned(),
                |c| {
                    format!(
                        "created {} ({} days ago)",
                        when(c),
                        days(now_ms - c.min(now_ms))
                    )
                },
            );
            out.push(warning(
                format!("{at}.enabled"),
                "disabled",
                format!(
                    "switched off (kill switch), {since}; everyone gets {:?}: remove the flag, \
                     or switch it back on (rule: warned when created {DISABLED_DAYS}+ days ago \
                     or undated)",
                    flag.default_value
                ),
                life,
            ));
        }
        return;
    }
    let weighted: Vec<&str> = flag
        .variants
        .iter()
        .filter(|(_, w)| *w > 0)
        .map(|(n, _)| *n)
        .collect();
    // Values a user can get other than the default: a variant through the percentage or the
    // allow list, or whatever a rule serves.
    let mut reachable: Vec<&str> = Vec::new();
    if flag.percentage_ppm > 0 || flag.allow > 0 {
        reachable.extend(&weighted);
    }
    reachable.extend(&flag.rule_values);
    reachable.retain(|v| *v != flag.default_value);
    if reachable.is_empty() {
        out.push(warning(
            at,
            "fully_off",
            format!(
                "no user can get anything but the default {:?} (percentage {}%, no allow list \
                 or rule serving another value): remove the flag and keep the default's code",
                flag.default_value,
                percent(flag.percentage_ppm)
            ),
            life,
        ));
        return;
    }
    if let [only] = weighted.as_slice()
        && *only != flag.default_value
        && flag.percentage_ppm == FULL_PPM
        && flag.deny == 0
        && flag.rule_values.iter().all(|v| v == only)
    {
        out.push(warning(
            at,
            "fully_on",
            format!(
                "every user gets {only:?} (100%, one variant, no deny list or rule serving \
                 another value): remove the flag and keep {only:?}'s code"
            ),
            life,
        ));
    }
}

fn check_rollout(config: &Config, rollout: &RolloutShape, now_ms: u64, out: &mut Vec<Warning>) {
    let at = format!("rollouts.{}", rollout.name);
    let life = rollout.lifecycle;
    out.extend(expired(
        &at,
        "finish the rollout (one version, as stable) or remove it",
        life,
        now_ms,
    ));
    // Aborted is a deliberate state during an incident, not a finished rollout.
    if rollout.aborted {
        return;
    }
    // The one version every keyed user gets, and by what.
    let full = match config.schedule_at(rollout.name, Some(now_ms)) {
        Some(state) => {
            let done = state.step == state.steps && state.canary_ppm == FULL_PPM;
            let new = config.schedule_versions(rollout.name).map(|(_, new)| new);
            match new {
                Some(new) if done => Some((new, "schedule", "its schedule finished at 100%")),
                _ => None,
            }
        }
        None => {
            let weights = config.weights(rollout.name).unwrap_or_default();
            match weights.iter().filter(|(_, w)| *w > 0).collect::<Vec<_>>()[..] {
                [(only, _)] => Some((*only, "versions", "the others' weights are 0")),
                _ => None,
            }
        }
    };
    // Everyone on stable is a rollout not begun (or a blue/green standby): nothing to clean.
    let Some((version, field, how)) = full.filter(|(v, ..)| *v != rollout.stable) else {
        return;
    };
    let idle: Vec<&str> = rollout
        .versions
        .iter()
        .copied()
        .filter(|v| *v != version && !rollout.targeted.contains(v))
        .collect();
    if idle.is_empty() {
        return;
    }
    out.push(warning(
        format!("{at}.{field}"),
        "finished",
        format!(
            "every user is on {version:?} ({how}) while the config still lists {}, stable \
             {:?}: make {version:?} stable and remove the old version(s)",
            idle.iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            rollout.stable
        ),
        life,
    ));
}

/// A share in parts per million as a percent, without trailing zeros (`12.5`).
fn percent(ppm: u32) -> String {
    let text = format!("{:.4}", f64::from(ppm) / 10_000.0);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}
