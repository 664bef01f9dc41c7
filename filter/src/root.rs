//! The plugin's root context: reads and checks the plugin configuration, installs the config
//! in force, and hands it to every new stream.

use crate::guard::{Guarding, JUDGE_EVERY_MS};
use crate::host::{self, BufferType, LogLevel};
use crate::live::Live;
use crate::metrics::{ConfigInfo, ConfigMetrics, increment};
use crate::source::{PluginConfig, SharedKeys, merge_override_keys, parse_plugin_config};
use crate::stream::Stream;
use crate::{Shared, TICK_MS, log, now_ms};
use rollout_core::Config;
use std::rc::Rc;

#[derive(Default)]
pub(crate) struct Root {
    pub(crate) shared: Option<Rc<Shared>>,
    pub(crate) live: Option<Live>,
    pub(crate) config_metrics: ConfigMetrics,
    /// Streams paused until the live source's first answer, by context id.
    pub(crate) waiting: Vec<u32>,
    pub(crate) guarding: Guarding,
    /// `rollout_config_info` of the config in force.
    pub(crate) info: Option<ConfigInfo>,
}

impl Root {
    /// Puts a config in force: the live source's plugin keys merged in, its trips read back.
    pub(crate) fn install(&mut self, mut config: Config) {
        if let Some(live) = &self.live {
            merge_override_keys(&mut config, &live.override_keys);
        }
        if config.has_overrides() && config.override_keys().is_empty() {
            // Not an error: a host may add keys later. Until then every token is unknown_key.
            log(
                LogLevel::Warn,
                "rollout: the config reads override tokens but lists no keys (neither it nor \
                 the plugin configuration's override_keys); every token counts as unknown_key",
            );
        }
        self.guarding = Guarding::new(&config);
        self.info = Some(ConfigInfo::install(self.info.take(), &config));
        self.shared = Some(Shared::new(config));
        // Sets the weight gauges of every config, and reads back trips latched for the same
        // revisions, so that an update never lets a tripped version's users back.
        self.guard_tick(now_ms(), true);
    }

    pub(crate) fn on_configure(&mut self) -> bool {
        self.config_metrics = ConfigMetrics::define();
        let bytes = match host::buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes,
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("rollout: cannot read plugin configuration: {status:?}"),
                );
                return false;
            }
        };
        match parse_plugin_config(&bytes) {
            Err(errors) => {
                // Every error on its own line, so each path is visible in Envoy's log.
                for error in &errors {
                    log(
                        LogLevel::Error,
                        &format!("rollout: config rejected: {error}"),
                    );
                }
                log(
                    LogLevel::Error,
                    &format!("rollout: config rejected with {} error(s)", errors.len()),
                );
                increment(self.config_metrics.rejected);
                false
            }
            Ok(PluginConfig::Static(config)) => {
                log(LogLevel::Info, "rollout: static config loaded");
                self.live = None;
                self.install(config);
                let counts_flags = self.shared.as_ref().is_some_and(|s| s.flags.is_some());
                if (self.guarding.needs_ticks() || counts_flags)
                    && let Err(status) = host::set_tick_period_ms(JUDGE_EVERY_MS as u32)
                {
                    log(
                        LogLevel::Error,
                        &format!(
                            "rollout: no ticks ({status:?}); this VM's guard will not judge \
                             and its gauges and flag counts will not move"
                        ),
                    );
                }
                true
            }
            Ok(PluginConfig::Live {
                source,
                fallback,
                override_keys,
            }) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "rollout: live config from cluster {:?} path {:?}, every {} ms",
                        source.cluster, source.path, source.poll_interval_ms
                    ),
                );
                let keys = SharedKeys::new(&source);
                let wait_until_ms = now_ms() + Live::wait_bound_ms(&source);
                // Before the fallback is installed, so that it gets this configuration's keys.
                self.live = Some(Live {
                    source,
                    keys,
                    override_keys,
                    token: host::random_u64(),
                    generation: 0,
                    seen_etag: None,
                    in_flight: None,
                    next_poll_ms: 0,
                    failing: false,
                    settled: false,
                    wait_until_ms,
                });
                self.install(fallback);
                // Another VM may have fetched already: start from what it published, and
                // do not wait if the source has answered before.
                self.follow();
                self.check_warm(now_ms());
                if let Err(status) = host::set_tick_period_ms(TICK_MS) {
                    log(
                        LogLevel::Error,
                        &format!(
                            "rollout: no ticks ({status:?}); this VM will not follow the source"
                        ),
                    );
                    // Without ticks nothing would end a wait: serve on the fallback at once.
                    if let Some(live) = self.live.as_mut() {
                        live.settled = true;
                    }
                }
                true
            }
        }
    }

    pub(crate) fn on_tick(&mut self) {
        let now = now_ms();
        if self.live.is_some() {
            self.follow();
            self.check_warm(now);
            self.poll(now);
        }
        if self.guarding.needs_ticks() {
            self.guard_tick(now, false);
        }
        if let Some(flags) = self.shared.as_ref().and_then(|s| s.flags.as_ref()) {
            flags.flush(now, false);
        }
    }

    pub(crate) fn new_stream(&self, root_id: u32) -> Stream {
        Stream {
            root_id,
            shared: self.shared.clone(),
            plan: None,
            started_ms: None,
        }
    }

    pub(crate) fn on_http_call_response(&mut self, token: u32, n_headers: usize, body_size: usize) {
        self.on_source_response(token, n_headers, body_size);
    }

    /// The streams to resume now: every waiting one, once the wait is over.
    pub(crate) fn take_resumable(&mut self) -> Vec<u32> {
        if self.warming() {
            Vec::new()
        } else {
            std::mem::take(&mut self.waiting)
        }
    }
}
