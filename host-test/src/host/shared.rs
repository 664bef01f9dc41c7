//! Shared-data and shared-queue imports: state every VM of one module sees, as Envoy shares it
//! between worker threads. Shared data carries a CAS number; queues belong to a VM id.

use anyhow::Result;

use super::guest::ENV;
use super::guest::{Cx, Imports, find_or_push, give_found, read, read_str, status_of, write_u32};
use super::{HostState, Queue, SharedState};
use crate::abi::status;

/// Registers this group's imports.
pub(super) fn add_to_linker(linker: &mut Imports<'_>) -> Result<()> {
    linker.add(ENV, "proxy_get_shared_data", proxy_get_shared_data)?;
    linker.add(ENV, "proxy_set_shared_data", proxy_set_shared_data)?;
    linker.add(
        ENV,
        "proxy_register_shared_queue",
        proxy_register_shared_queue,
    )?;
    linker.add(
        ENV,
        "proxy_resolve_shared_queue",
        proxy_resolve_shared_queue,
    )?;
    linker.add(
        ENV,
        "proxy_dequeue_shared_queue",
        proxy_dequeue_shared_queue,
    )?;
    linker.add(
        ENV,
        "proxy_enqueue_shared_queue",
        proxy_enqueue_shared_queue,
    )
}

fn proxy_get_shared_data(
    mut cx: Cx<'_>,
    key_ptr: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_size: i32,
    ret_cas: i32,
) -> wasmtime::Result<i32> {
    let Some(key) = read_str(&cx, key_ptr, key_len) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let Some((value, cas)) = cx.data().shared_data(&key) else {
        return Ok(status::NOT_FOUND);
    };
    if !write_u32(&mut cx, ret_cas, cas) {
        return Ok(status::BAD_ARGUMENT);
    }
    give_found(&mut cx, Ok(value), ret_ptr, ret_size)
}

fn proxy_set_shared_data(
    cx: Cx<'_>,
    key_ptr: i32,
    key_len: i32,
    val_ptr: i32,
    val_len: i32,
    cas: i32,
) -> i32 {
    let (Some(key), Some(value)) = (read_str(&cx, key_ptr, key_len), read(&cx, val_ptr, val_len))
    else {
        return status::BAD_ARGUMENT;
    };
    cx.data().set_shared_data(key, value, cas as u32)
}

fn proxy_register_shared_queue(mut cx: Cx<'_>, name_ptr: i32, name_len: i32, ret_id: i32) -> i32 {
    let Some(name) = read_str(&cx, name_ptr, name_len) else {
        return status::BAD_ARGUMENT;
    };
    let id = cx.data().register_queue(name);
    status_of(write_u32(&mut cx, ret_id, id))
}

fn proxy_resolve_shared_queue(
    mut cx: Cx<'_>,
    vm_ptr: i32,
    vm_len: i32,
    name_ptr: i32,
    name_len: i32,
    ret_id: i32,
) -> i32 {
    let (Some(vm_id), Some(name)) = (
        read_str(&cx, vm_ptr, vm_len),
        read_str(&cx, name_ptr, name_len),
    ) else {
        return status::BAD_ARGUMENT;
    };
    match cx.data().resolve_queue(&vm_id, &name) {
        Some(id) => status_of(write_u32(&mut cx, ret_id, id)),
        None => status::NOT_FOUND,
    }
}

fn proxy_dequeue_shared_queue(
    mut cx: Cx<'_>,
    id: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
    let found = cx.data().dequeue(id as u32);
    give_found(&mut cx, found, ret_ptr, ret_size)
}

fn proxy_enqueue_shared_queue(cx: Cx<'_>, id: i32, ptr: i32, len: i32) -> i32 {
    let Some(value) = read(&cx, ptr, len) else {
        return status::BAD_ARGUMENT;
    };
    cx.data().enqueue(id as u32, value)
}

impl HostState {
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared().data.get(key).cloned()
    }

    fn set_shared_data(&self, key: String, value: Vec<u8>, cas: u32) -> i32 {
        self.shared().set_data(key, value, cas)
    }

    /// The id of this VM's queue by that name, registering it the first time.
    fn register_queue(&self, name: String) -> u32 {
        let vm_id = self.vm_id.clone();
        let mut shared = self.shared();
        find_or_push(
            &mut shared.queues,
            |q| q.vm_id == vm_id && q.name == name,
            || Queue {
                vm_id: vm_id.clone(),
                name: name.clone(),
                items: Default::default(),
            },
        ) as u32
    }

    fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.shared()
            .queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
            .map(|id| id as u32)
    }

    /// The oldest item; `NOT_FOUND` for an unknown queue, `EMPTY` for an empty one.
    fn dequeue(&self, id: u32) -> Result<Vec<u8>, i32> {
        let mut shared = self.shared();
        let queue = shared
            .queues
            .get_mut(id as usize)
            .ok_or(status::NOT_FOUND)?;
        queue.items.pop_front().ok_or(status::EMPTY)
    }

    fn enqueue(&self, id: u32, value: Vec<u8>) -> i32 {
        match self.shared().queues.get_mut(id as usize) {
            Some(q) => {
                q.items.push_back(value);
                status::OK
            }
            None => status::NOT_FOUND,
        }
    }
}

impl SharedState {
    /// Sets a value if `cas` is 0 ("no check", as in Envoy) or still current.
    pub(super) fn set_data(&mut self, key: String, value: Vec<u8>, cas: u32) -> i32 {
        let current_cas = self.data.get(&key).map(|(_, c)| *c);
        if cas != 0 && current_cas.is_some_and(|c| c != cas) {
            return status::CAS_MISMATCH;
        }
        let next = current_cas.unwrap_or(0).wrapping_add(1).max(1);
        self.data.insert(key, (value, next));
        status::OK
    }
}
