//! Headers the core's header contract writes to, in a Worker.

use worker::worker_sys::web_sys;
use worker::{Headers, Result};

/// A `Headers` object the core's header contract writes to. The trait's calls cannot fail,
/// so the first error (an invalid name or value) is kept and returned by [`Self::finish`].
pub(crate) struct WorkerHeaders {
    headers: Headers,
    error: Option<worker::Error>,
}

impl WorkerHeaders {
    /// A copy of `headers`, made by the runtime in one call rather than a call per header.
    pub(crate) fn copy_of(headers: &Headers) -> Result<Self> {
        Ok(WorkerHeaders {
            headers: Headers(web_sys::Headers::new_with_headers(&headers.0)?),
            error: None,
        })
    }

    fn keep(&mut self, result: Result<()>) {
        if let (Err(e), None) = (result, &self.error) {
            self.error = Some(e);
        }
    }

    pub(crate) fn finish(mut self) -> Result<Headers> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(self.headers),
        }
    }
}

impl rollout_core::HeaderMapMut for WorkerHeaders {
    fn replace(&mut self, name: &str, value: &str) {
        // `set` replaces every value, as the contract asks.
        let result = self.headers.set(name, value);
        self.keep(result);
    }

    fn add(&mut self, name: &str, value: &str) {
        let result = self.headers.append(name, value);
        self.keep(result);
    }

    fn remove(&mut self, name: &str) {
        let result = self.headers.delete(name);
        self.keep(result);
    }
}
