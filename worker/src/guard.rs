//! The guard in an isolate. An isolate counts the responses of each guarded rollout's versions
//! and sends the counts in batches to the rollout's Durable Object (`guard:<rollout>`, see
//! [`crate::state`]), which judges the sum over every isolate and answers with the latch. The
//! isolate decides with the trips it knows.
//!
//! A batch goes at most every `ROLLOUT_GUARD_SYNC_MS`, after the response, in `waitUntil`:
//! never one call per request, and never on a request's path. Only an isolate whose
//! knowledge is missing (a new config) or older than the config's hold time waits for an
//! answer before deciding, and at most `ROLLOUT_STATE_WAIT_MS`: an object that cannot be
//! reached costs a request that much once per hold time, and the isolate routes on the last
//! state it knew.

use std::cell::RefCell;
use std::rc::Rc;

use rollout_core::{Config, Counts, Latch, Tripped};
use worker::{
    Context, Date, Env, Method, ObjectNamespace, Request, RequestInit, Result, console_warn,
};

use crate::settings::Settings;
use crate::state::Report;
use crate::within;

/// The Durable Object binding of [`crate::state::RolloutState`].
pub(crate) const STATE_BINDING: &str = "ROLLOUT_STATE";
/// How long a batch sent in `waitUntil` may take before it is given up (its counts go into
/// the next one).
const BACKGROUND_WAIT_MS: u64 = 5_000;

/// What this isolate knows of the guard, for the config in force.
#[derive(Default)]
struct Client {
    /// The config the counts and slots belong to.
    config: Option<Rc<Config>>,
    /// Per slot: `None` if not counted (no guard), else the guard's latency bound.
    bounds: Vec<Option<Option<u64>>>,
    /// Per slot: responses since the last batch.
    counts: Vec<Counts>,
    /// Per guarded rollout: its revision, the latch the object last gave (if tripped), and
    /// when that answer came.
    known: Vec<(String, u64, Option<Latch>, u64)>,
    /// The trips in force, for the config's slots.
    tripped: Vec<Tripped>,
    /// When the last batch was sent.
    sent_at_ms: u64,
    /// When the last batch was sent, answered or given up: 0 when a new revision is not
    /// known yet.
    tried_at_ms: u64,
    in_flight: bool,
}

thread_local! {
    static CLIENT: RefCell<Client> = RefCell::new(Client::default());
}

impl Client {
    /// Takes up a newly installed config: counts restart; what is known of rollouts whose
    /// revision did not change still holds.
    fn install(&mut self, config: &Rc<Config>) {
        let mut bounds = vec![None; config.versions().count()];
        for g in config.guarded() {
            for slot in g.first_slot..g.first_slot + g.n_versions {
                if let Some(b) = bounds.get_mut(slot) {
                    *b = Some(g.guard.latency_bound_ms);
                }
            }
        }
        self.counts = vec![Counts::default(); bounds.len()];
        self.bounds = bounds;
        self.known
            .retain(|(rollout, revision, ..)| config.revision(rollout) == Some(*revision));
        if self.known.len() < config.guarded().count() {
            self.tried_at_ms = 0;
        }
        self.config = Some(config.clone());
        self.retrip();
    }

    fn retrip(&mut self) {
        let Some(config) = &self.config else { return };
        self.tripped = self
            .known
            .iter()
            .filter_map(|(rollout, _, latch, _)| {
                let latch = latch.as_ref()?;
                Some(Tripped {
                    slot: config.slot_of(rollout, &latch.version)?,
                    at_ms: latch.at_ms,
                })
            })
            .collect();
    }

    /// Whether every guarded rollout's state was learnt within `max_age_ms`.
    fn fresh(&self, config: &Config, now: u64, max_age_ms: u64) -> bool {
        config.guarded().all(|g| {
            self.known.iter().any(|(rollout, revision, _, at)| {
                rollout == g.rollout
                    && *revision == g.revision
                    && now.saturating_sub(*at) < max_age_ms
            })
        })
    }

    /// Whether the counts and slots are `config`'s.
    fn holds(&self, config: &Rc<Config>) -> bool {
        self.config
            .as_ref()
            .is_some_and(|held| Rc::ptr_eq(held, config))
    }

    /// Installs `config` unless it is the one held.
    fn take_up(&mut self, config: &Rc<Config>) {
        if !self.holds(config) {
            self.install(config);
        }
    }

    /// Takes up `config` if it is new, and says whether a request must first wait for the
    /// objects' answer (this isolate's knowledge is missing or older than the config's hold
    /// time) and whether a batch is due.
    fn needs(&mut self, settings: &Settings, config: &Rc<Config>, now: u64) -> (bool, bool) {
        self.take_up(config);
        let max_age = settings.ttl_ms.max(1);
        // A request waits only if no batch went out within the hold time: the first request
        // after a new config, or after the isolate sat idle; an object that does not answer is
        // not waited for again while batches keep trying in the background.
        let wait = !self.in_flight
            && !self.fresh(config, now, max_age)
            && now.saturating_sub(self.tried_at_ms) >= max_age;
        let due = !self.in_flight && now.saturating_sub(self.sent_at_ms) >= settings.guard_sync_ms;
        (wait, due)
    }
}

/// Whether the guard is judged for `config`: it has a guarded rollout and the Durable Object
/// is bound.
fn judged(settings: &Settings, config: &Config) -> bool {
    settings.has_state && config.guarded().next().is_some()
}

/// Whether a request must go through [`sync_if_due`] before it is decided: a wait for the
/// objects' answer or a batch is due.
pub(crate) fn due(settings: &Settings, config: &Rc<Config>, now: u64) -> bool {
    judged(settings, config)
        && CLIENT.with(|c| {
            let (wait, due) = c.borrow_mut().needs(settings, config, now);
            wait || due
        })
}

/// Waits (bounded) for the objects' answer when this isolate's knowledge is missing or older
/// than the config's hold time; otherwise sends a batch in `waitUntil` when one is due.
pub(crate) async fn sync_if_due(
    env: &Env,
    ctx: &Context,
    settings: &Settings,
    config: &Rc<Config>,
) {
    if !judged(settings, config) {
        return;
    }
    let now = Date::now().as_millis();
    let (wait, due) = CLIENT.with(|c| c.borrow_mut().needs(settings, config, now));
    if wait {
        sync(env.clone(), settings.state_wait_ms).await;
    } else if due {
        ctx.wait_until(sync(env.clone(), BACKGROUND_WAIT_MS));
    }
}

/// The trips to decide `config` with: those this isolate knows.
pub(crate) fn trips(settings: &Settings, config: &Rc<Config>) -> Vec<Tripped> {
    if !judged(settings, config) {
        return Vec::new();
    }
    CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        c.take_up(config);
        c.tripped.clone()
    })
}

/// Whether the responses of `slot` (of `config`) are counted: its rollout has a guard that is
/// judged.
pub(crate) fn counted(settings: &Settings, config: &Rc<Config>, slot: usize) -> bool {
    judged(settings, config)
        && CLIENT.with(|c| {
            let c = c.borrow();
            c.holds(config) && matches!(c.bounds.get(slot), Some(Some(_)))
        })
}

/// Counts a response of `slot` (of `config`) if its rollout has a guard.
pub(crate) fn count(config: &Rc<Config>, slot: usize, status: u16, latency_ms: u64) {
    CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        if !c.holds(config) {
            return; // A newer config came in meanwhile: its counts start from nothing.
        }
        let Some(Some(bound)) = c.bounds.get(slot).copied() else {
            return;
        };
        if let Some(counts) = c.counts.get_mut(slot) {
            counts.count(status, latency_ms, bound);
        }
    });
}

/// Sends this isolate's batch to each guarded rollout's object and takes up the answers, all
/// within `wait_ms`; nothing while another batch is in flight. Counts that did not get through
/// go into the next batch. (Never dropped half-way: it owns `in_flight`.)
async fn sync(env: Env, wait_ms: u64) {
    let now = Date::now().as_millis();
    let deadline = now.saturating_add(wait_ms);
    let taken = CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        if c.in_flight {
            return None;
        }
        let config = c.config.clone()?;
        c.in_flight = true;
        c.sent_at_ms = now;
        c.tried_at_ms = now;
        let fresh = vec![Counts::default(); c.counts.len()];
        Some((config, std::mem::replace(&mut c.counts, fresh)))
    });
    let Some((config, batch)) = taken else {
        return;
    };
    let namespace = env.durable_object(STATE_BINDING);
    // Checked once per isolate by the settings; an error here is the runtime's.
    let mut answers = Vec::new();
    let mut unsent = vec![Counts::default(); batch.len()];
    for g in config.guarded() {
        let slots = g.first_slot..g.first_slot + g.n_versions;
        let report = Report {
            rollout: g.rollout.to_owned(),
            revision: g.revision,
            stable: g.stable_slot.saturating_sub(g.first_slot),
            guard: g.guard.clone(),
            versions: slots
                .clone()
                .filter_map(|s| {
                    let (_, version) = config.slot_names(s)?;
                    Some((
                        version.to_owned(),
                        batch.get(s).copied().unwrap_or_default(),
                    ))
                })
                .collect(),
        };
        let left = deadline.saturating_sub(Date::now().as_millis()).max(1);
        let answer = match &namespace {
            Ok(namespace) => within(left, send(namespace, &report))
                .await
                .unwrap_or_else(|| Err(format!("no answer within {wait_ms} ms").into())),
            Err(e) => Err(worker::Error::RustError(e.to_string())),
        };
        match answer {
            Ok(latch) => answers.push((g.rollout.to_owned(), g.revision, latch)),
            Err(e) => {
                console_warn!(
                    "rollout: guard state of {} not reached: {e}; deciding on the last state \
                     known",
                    g.rollout
                );
                for slot in slots {
                    if let (Some(u), Some(b)) = (unsent.get_mut(slot), batch.get(slot)) {
                        *u = *b;
                    }
                }
            }
        }
    }
    let done = Date::now().as_millis();
    CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        c.in_flight = false;
        c.tried_at_ms = done;
        if !c.holds(&config) {
            return;
        }
        for (counts, more) in c.counts.iter_mut().zip(unsent) {
            *counts += more;
        }
        for (rollout, revision, latch) in answers {
            c.known.retain(|(r, ..)| *r != rollout);
            c.known.push((rollout, revision, latch, done));
        }
        c.retrip();
    });
}

/// One report to `guard:<rollout>`; the answer is the latch of the report's revision.
async fn send(namespace: &ObjectNamespace, report: &Report) -> Result<Option<Latch>> {
    let stub = namespace.get_by_name(&format!("guard:{}", report.rollout))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(report.encode().into()));
    let request = Request::new_with_init("https://rollout-state/guard", &init)?;
    let mut response = stub.fetch_with_request(request).await?;
    let text = response.text().await?;
    if response.status_code() != 200 {
        return Err(format!("status {}: {text}", response.status_code()).into());
    }
    Ok(Latch::decode(text.as_bytes()))
}
