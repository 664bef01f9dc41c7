//! The ABI dispatch: the callbacks Envoy calls, routed by context id to the root contexts and
//! streams of this VM.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::host::{self, LogLevel};
use crate::log;
use crate::root::Root;
use crate::stream::Stream;

/// `proxy_on_request_headers` answers: go on, or hold the request until the filter resumes it.
const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

/// The contexts of this VM: roots (one per plugin configuration sharing the VM) and the
/// streams in flight, by the ids the host gives them.
#[derive(Default)]
struct Contexts {
    roots: BTreeMap<u32, Root>,
    streams: BTreeMap<u32, Stream>,
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

impl Contexts {
    /// Decides a request, or holds it while its root waits for the live source's first
    /// answer, so that no request is decided on the fallback while the source can answer.
    fn on_request_headers(&mut self, context_id: u32) -> u32 {
        let Some(stream) = self.streams.get_mut(&context_id) else {
            return CONTINUE;
        };
        if let Some(root) = self.roots.get_mut(&stream.root_id)
            && root.warming()
        {
            root.waiting.push(context_id);
            return PAUSE;
        }
        stream.on_request_headers();
        CONTINUE
    }

    /// Decides and resumes the requests a root held, once its wait is over, with the config
    /// in force now.
    fn resume_waiting(&mut self, root_id: u32) {
        let Some(root) = self.roots.get_mut(&root_id) else {
            return;
        };
        // Runs on every tick: nothing to do once the wait is over and every request went on.
        let held = root.take_resumable();
        if held.is_empty() {
            return;
        }
        let shared = root.shared.clone();
        for context_id in held {
            // A request whose client went away was deleted meanwhile.
            let Some(stream) = self.streams.get_mut(&context_id) else {
                continue;
            };
            stream.shared = shared.clone();
            let resumed = host::set_effective_context(context_id).and_then(|()| {
                stream.on_request_headers();
                host::continue_request()
            });
            if let Err(status) = resumed {
                log(
                    LogLevel::Error,
                    &format!("rollout: cannot resume request {context_id}: {status:?}"),
                );
            }
        }
    }
}

/// Runs `f` on the contexts; a re-entrant call (which the host never makes) does nothing
/// rather than panic.
fn with_contexts<R: Default>(f: impl FnOnce(&mut Contexts) -> R) -> R {
    CONTEXTS.with(|c| {
        c.try_borrow_mut()
            .map(|mut c| f(&mut c))
            .unwrap_or_default()
    })
}

/// The ABI entry points. Envoy calls only the callbacks a module exports, so this filter
/// exports only the ones it needs: no body, trailer, log or done callbacks per request.
#[allow(
    missing_docs,
    unsafe_code,
    unreachable_pub,
    reason = "the ABI names and documents these exports; `no_mangle` counts as unsafe code and exports whatever the visibility, and exporting the ABI's names is the point"
)]
mod abi {
    use super::{Root, with_contexts};

    /// Which ABI the module speaks.
    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    #[cfg(target_os = "wasi")]
    unsafe extern "C" {
        fn __wasm_call_ctors();
    }

    /// Runs static constructors, as a WASI reactor module must before anything else.
    #[unsafe(no_mangle)]
    pub extern "C" fn _initialize() {
        // SAFETY: the linker's constructor list, run once by the host before any callback.
        #[cfg(target_os = "wasi")]
        unsafe {
            __wasm_call_ctors();
        }
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
        with_contexts(|c| {
            if parent_id == 0 {
                c.roots.insert(context_id, Root::default());
            } else {
                // A stream of an unknown root gets no config: it passes untouched.
                let stream = c
                    .roots
                    .get(&parent_id)
                    .map(|root| root.new_stream(parent_id))
                    .unwrap_or_default();
                c.streams.insert(context_id, stream);
            }
        });
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_configuration_size: usize) -> u32 {
        1
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_configure(root_id: u32, _configuration_size: usize) -> u32 {
        with_contexts(|c| c.roots.get_mut(&root_id).is_some_and(Root::on_configure)).into()
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_tick(root_id: u32) {
        with_contexts(|c| {
            if let Some(root) = c.roots.get_mut(&root_id) {
                root.on_tick();
            }
            c.resume_waiting(root_id);
        });
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_http_call_response(
        root_id: u32,
        token: u32,
        n_headers: usize,
        body_size: usize,
        _n_trailers: usize,
    ) {
        with_contexts(|c| {
            if let Some(root) = c.roots.get_mut(&root_id) {
                root.on_http_call_response(token, n_headers, body_size);
            }
            c.resume_waiting(root_id);
        });
    }

    /// Continue, or Pause while a live source has not answered yet (see
    /// `Contexts::on_request_headers`).
    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_request_headers(context_id: u32, _n: usize, _eos: u32) -> u32 {
        with_contexts(|c| c.on_request_headers(context_id))
    }

    /// Always 0, Continue.
    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_response_headers(context_id: u32, _n: usize, _eos: u32) -> u32 {
        with_contexts(|c| {
            c.streams
                .get_mut(&context_id)
                .map(|s| s.on_response_headers())
        });
        0
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_delete(context_id: u32) {
        with_contexts(|c| {
            if c.streams.remove(&context_id).is_none() {
                c.roots.remove(&context_id);
            }
        });
    }
}
