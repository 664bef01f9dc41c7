//! The rollout decision core: which version of a service a request goes to, and which
//! feature flags are on for its user.
//!
//! Sans-IO: every input is a value (config bytes, [`RequestFacts`], [`HostInputs`]) and every
//! output is plain data ([`Decision`], header lists). No clock, no randomness, no logging, no
//! host SDK: the Envoy filter, the Cloudflare Worker and the CLI all wrap this same code, so a
//! user gets the same decision on every host.
//!
//! ```
//! use rollout_core::{Config, HostInputs};
//! let config = Config::from_json(br#"{
//!     "user_key": ["header:x-user-id"],
//!     "rollouts": {"checkout": {"versions": [
//!         {"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}]}}
//! }"#).map_err(|e| e.to_string())?;
//! let request = [(":path", "/cart"), ("x-user-id", "user-42")];
//! let decision = config.decide(&request[..], HostInputs::default());
//! let version = decision.rollout.map(|r| r.version);
//! assert!(version == Some("v1") || version == Some("v2"));
//! # Ok::<(), String>(())
//! ```

mod config;
mod contract;
mod decide;
mod error;
mod guard;
mod hash;
pub mod json;
mod schedule;
mod semver;
pub mod token;
#[cfg(any(test, feature = "vectors"))]
pub mod vectors;

pub use config::{
    Config, DEFAULT_FLAGS_HEADER, DEFAULT_OVERRIDE_HEADER, DEFAULT_REASON_HEADER,
    DEFAULT_ROLLOUT_HEADER, DEFAULT_VERSION_HEADER, FlagShape, HeaderNames, Lifecycle,
    MAX_CONFIG_BYTES, MAX_KEY_BYTES, OPERATOR_DEFS, OPERATORS, Operand, Operator, RolloutShape,
    Source,
};
pub use contract::{
    ContractNames, HeaderMapMut, ResponsePlan, SERVER_TIMING_CONFIG_METRIC, SERVER_TIMING_METRIC,
    Unread,
};
pub use decide::{
    AssignedKey, Decision, FlagChoice, FlagReason, HostInputs, KeyStatus, RequestFacts,
    VersionChoice, VersionReason, cookie_value,
};
pub use error::{ConfigError, ConfigErrors, ErrorKind};
pub use guard::{Counts, Guard, Guarded, Latch, Trip, TripReason, Tripped, Window, Z};
pub use hash::BUCKETS;
pub use schedule::{ScheduleState, format_time, parse_duration, parse_time};
pub use token::TokenStatus;
