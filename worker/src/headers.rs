//! Headers the core's header contract writes to, in a Worker.

use wasm_bindgen::{JsValue, prelude::wasm_bindgen};
use worker::worker_sys::web_sys;
use worker::{Headers, Result};

// Headers cross between wasm and JavaScript in one call per header map, not a call (and a
// string decode) per name and value, which the profile of issue 12 showed: the contract's
// edits go over as one string; only the headers the config reads come back, as one string
// (iterating a whole `Headers` goes through workerd's C++ per entry, and measured as the
// largest single cost of a Worker that calls the core once per request; benches/STEPS.md).
#[wasm_bindgen(inline_js = r#"
export function rollout_headers_with(source, ops) {
  const headers = new Headers(source);
  const p = ops.split("\0");
  for (let i = 0; i + 1 < p.length; ) {
    const op = p[i];
    if (op === "d") {
      headers.delete(p[i + 1]);
      i += 2;
    } else {
      if (op === "s") headers.set(p[i + 1], p[i + 2]);
      else headers.append(p[i + 1], p[i + 2]);
      i += 3;
    }
  }
  return headers;
}

export function rollout_read_headers(headers, names) {
  let out = "";
  for (const name of names.split("\n")) {
    const value = headers.get(name);
    if (value !== null) out += name + "," + value + "\n";
  }
  return out;
}
"#)]
extern "C" {
    /// A copy of `source` with `ops` applied in order: `s`et, `a`ppend or `d`elete, each field
    /// ended by a NUL. Throws what `Headers` throws for an invalid name or value.
    #[wasm_bindgen(catch)]
    fn rollout_headers_with(
        source: &web_sys::Headers,
        ops: &str,
    ) -> std::result::Result<web_sys::Headers, JsValue>;

    /// The values of `names` (separated by newlines) that `headers` has, as `name,value` lines
    /// (several values of one name joined by the runtime, as iterating would join them).
    /// Throws what `Headers.get` throws for an invalid name (the config's are all tokens).
    #[wasm_bindgen(catch)]
    fn rollout_read_headers(
        headers: &web_sys::Headers,
        names: &str,
    ) -> std::result::Result<String, JsValue>;
}

/// The request headers named in `names` (newline-separated, lowercase) as `name,value` lines.
/// An error fails the request rather than deciding without the headers: the contract could
/// not then remove a client's copies of its headers.
pub(crate) fn read_lines(headers: &Headers, names: &str) -> Result<String> {
    Ok(rollout_read_headers(&headers.0, names)?)
}

/// A copy of a `Headers` object that the core's header contract writes to. The edits are
/// collected and made by the runtime in one call, in [`Self::finish`], which returns the first
/// error (an invalid name or value).
pub(crate) struct WorkerHeaders {
    source: web_sys::Headers,
    ops: String,
    error: Option<worker::Error>,
}

impl WorkerHeaders {
    /// A copy of `headers`, to be made (with the edits) by [`Self::finish`].
    pub(crate) fn copy_of(headers: &Headers) -> Self {
        WorkerHeaders {
            source: headers.0.clone(),
            ops: String::with_capacity(256),
            error: None,
        }
    }

    fn push(&mut self, op: &str, fields: &[&str]) {
        // NUL ends a field; the runtime rejects it in names and values, so refuse it here as
        // the runtime would have.
        if let Some(bad) = fields.iter().find(|f| f.contains('\0')) {
            if self.error.is_none() {
                self.error = Some(worker::Error::RustError(format!(
                    "invalid header name or value {bad:?}"
                )));
            }
            return;
        }
        self.ops.push_str(op);
        self.ops.push('\0');
        for field in fields {
            self.ops.push_str(field);
            self.ops.push('\0');
        }
    }

    pub(crate) fn finish(mut self) -> Result<Headers> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(Headers(rollout_headers_with(&self.source, &self.ops)?)),
        }
    }
}

impl rollout_core::HeaderMapMut for WorkerHeaders {
    fn replace(&mut self, name: &str, value: &str) {
        // `set` replaces every value, as the contract asks.
        self.push("s", &[name, value]);
    }

    fn add(&mut self, name: &str, value: &str) {
        self.push("a", &[name, value]);
    }

    fn remove(&mut self, name: &str) {
        self.push("d", &[name]);
    }
}
