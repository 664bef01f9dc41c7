//! The header contract's edits, as the JavaScript entry (`src/entry.mjs`) makes them.

/// The edits the core's header contract makes to a header map, recorded for the entry to make
/// on the runtime's `Headers` in one go: headers cross between wasm and JavaScript as one
/// string per map, not a call (and a string decode) per name and value, which the profile of
/// issue 12 showed as a large share of the Worker's CPU (benches/STEPS.md).
#[derive(Default)]
pub(crate) struct Edits {
    /// Each edit as NUL-ended fields: `s`et or `a`ppend with name and value, or `d`elete with
    /// a name.
    fields: String,
    count: usize,
    error: Option<String>,
}

impl Edits {
    fn push(&mut self, op: &str, fields: &[&str]) {
        // NUL ends a field; the runtime rejects it in names and values, so refuse it here as
        // the runtime would have.
        if let Some(bad) = fields.iter().find(|f| f.contains('\0')) {
            self.error
                .get_or_insert_with(|| format!("invalid header name or value {bad:?}"));
            return;
        }
        for field in std::iter::once(&op).chain(fields) {
            self.fields.push_str(field);
            self.fields.push('\0');
        }
        self.count += 1 + fields.len();
    }

    /// Appends the edits to `plan` as its count of fields and the fields, each NUL-ended, or
    /// returns the first error (a NUL in a name or value).
    pub(crate) fn write_to(self, plan: &mut String) -> Result<(), String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        plan.push_str(&self.count.to_string());
        plan.push('\0');
        plan.push_str(&self.fields);
        Ok(())
    }
}

impl rollout_core::HeaderMapMut for Edits {
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
