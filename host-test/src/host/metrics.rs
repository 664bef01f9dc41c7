//! Metric imports: counters, gauges and histograms shared by every VM of one module, as Envoy
//! aggregates them across workers.

use anyhow::Result;

use super::guest::{Cx, ENV, Imports};
use super::guest::{find_or_push, read_str, status_of, write, write_u32};
use super::{HostState, Metric};
use crate::abi::{MetricKind, status};

/// Registers this group's imports.
pub(super) fn add_to_linker(linker: &mut Imports<'_>) -> Result<()> {
    linker.add(ENV, "proxy_define_metric", proxy_define_metric)?;
    linker.add(ENV, "proxy_increment_metric", proxy_increment_metric)?;
    linker.add(ENV, "proxy_record_metric", proxy_record_metric)?;
    linker.add(ENV, "proxy_get_metric", proxy_get_metric)
}

fn proxy_define_metric(
    mut cx: Cx<'_>,
    kind: i32,
    name_ptr: i32,
    name_len: i32,
    ret_id: i32,
) -> i32 {
    let (Some(kind), Some(name)) = (
        MetricKind::from_abi(kind),
        read_str(&cx, name_ptr, name_len),
    ) else {
        return status::BAD_ARGUMENT;
    };
    let id = cx.data().define_metric(kind, name);
    status_of(write_u32(&mut cx, ret_id, id))
}

fn proxy_increment_metric(cx: Cx<'_>, id: i32, offset: i64) -> i32 {
    cx.data().increment_metric(id as u32, offset)
}

fn proxy_record_metric(cx: Cx<'_>, id: i32, value: i64) -> i32 {
    cx.data().record_metric(id as u32, value)
}

fn proxy_get_metric(mut cx: Cx<'_>, id: i32, ret: i32) -> i32 {
    match cx.data().metric_value(id as u32) {
        Some(v) => status_of(write(&mut cx, ret, &(v as u64).to_le_bytes())),
        None => status::NOT_FOUND,
    }
}

impl HostState {
    /// The metric's id; defining a name twice gives the same metric, as in Envoy.
    fn define_metric(&self, kind: MetricKind, name: String) -> u32 {
        let mut shared = self.shared();
        find_or_push(
            &mut shared.metrics,
            |m| m.name == name && m.kind == kind,
            || Metric {
                name: name.clone(),
                kind,
                value: 0,
                samples: Vec::new(),
            },
        ) as u32
    }

    fn increment_metric(&self, id: u32, offset: i64) -> i32 {
        match self.shared().metrics.get_mut(id as usize) {
            Some(m) if m.kind != MetricKind::Histogram => {
                m.value = m.value.saturating_add(offset);
                status::OK
            }
            Some(_) => status::BAD_ARGUMENT,
            None => status::NOT_FOUND,
        }
    }

    /// Sets a counter or gauge; adds a sample to a histogram.
    fn record_metric(&self, id: u32, value: i64) -> i32 {
        match self.shared().metrics.get_mut(id as usize) {
            Some(m) if m.kind == MetricKind::Histogram => {
                m.samples.push(value as u64);
                m.value += 1;
                status::OK
            }
            Some(m) => {
                m.value = value;
                status::OK
            }
            None => status::NOT_FOUND,
        }
    }

    fn metric_value(&self, id: u32) -> Option<i64> {
        self.shared().metrics.get(id as usize).map(|m| m.value)
    }
}
