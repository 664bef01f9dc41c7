//! [`FilterModule`]: a compiled filter, the host's imports linked to it, and the state its VMs
//! share; it starts [`Vm`]s.

use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow, bail};
use wasmtime::{CallHook, Engine, FuncType, InstancePre, Linker, Module, Store};

use super::guest::{Imports, v};
use super::vm::Vm;
use super::{HostState, Metric, SharedState, VmOptions, add_to_linker, lock};

/// A compiled filter module linked to the host's imports, and the state its VMs share
/// (metrics, shared data, queues).
#[derive(Clone)]
pub struct FilterModule {
    engine: Engine,
    /// The module with the host's imports resolved, once: each VM only instantiates it.
    pre: InstancePre<HostState>,
    /// Imports of the module that the host does not define, as `module::name`.
    unimplemented: Vec<String>,
    /// Every import the host defines, as (module, name), in the order of their indices.
    defined: Arc<[(&'static str, &'static str)]>,
    /// The host's imports alone, to tell their types.
    host: Linker<HostState>,
    shared: Arc<Mutex<SharedState>>,
}

/// One import the host defines.
#[derive(Debug, Clone)]
pub struct HostImport {
    /// Its module: `env` for proxy-wasm, `wasi_snapshot_preview1` for WASI.
    pub module: &'static str,
    /// Its name, as [`VmOptions::host_errors`] names it.
    pub name: &'static str,
    /// Its parameters and results.
    pub ty: FuncType,
}

impl FilterModule {
    /// Compiles a filter from .wasm (or .wat) bytes.
    pub fn new(wasm: &[u8]) -> Result<FilterModule> {
        let engine = Engine::default();
        let module = Module::new(&engine, wasm)
            .map_err(anyhow::Error::from)
            .context("compiling the filter module")?;
        let mut linker = Linker::new(&engine);
        let defined = {
            let mut imports = Imports::new(&mut linker);
            add_to_linker(&mut imports)?;
            imports.defined()
        };
        let unimplemented = module
            .imports()
            .filter(|i| !defined.contains(&(i.module(), i.name())))
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        let host = linker.clone();
        // Imports the host lacks trap only if called, as in Envoy, which links them lazily.
        linker.define_unknown_imports_as_traps(&module)?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(anyhow::Error::from)
            .context("linking the filter to the host")?;
        Ok(FilterModule {
            engine,
            pre,
            unimplemented,
            defined: defined.into(),
            host,
            shared: Arc::default(),
        })
    }

    /// Compiles a filter from a file.
    pub fn from_file(path: &std::path::Path) -> Result<FilterModule> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        FilterModule::new(&bytes)
    }

    /// The same compiled module with shared state of its own (metrics, shared data, queues,
    /// VM count), as a fresh Envoy process has: for runs that reuse one compilation yet must
    /// not see each other's state (the fuzz target `harness_chaos`).
    pub fn with_fresh_state(&self) -> FilterModule {
        FilterModule {
            shared: Arc::default(),
            ..self.clone()
        }
    }

    /// Imports of the module that the host does not implement (they trap if called).
    pub fn unimplemented_imports(&self) -> Result<Vec<String>> {
        Ok(self.unimplemented.clone())
    }

    /// Starts a VM: instantiates the module and runs its start-up (`_initialize`, context
    /// creation of the root, `proxy_on_vm_start`). Configure it with [`Vm::configure`].
    pub fn start_vm(&self, options: VmOptions) -> Result<Vm> {
        let injected = self.injected(&options)?;
        let mut store = Store::new(&self.engine, self.new_state(options, injected));
        store.call_hook(|mut cx, hook| {
            let calls = &mut cx.data_mut().calls;
            match hook {
                CallHook::CallingHost => calls.into_host += 1,
                CallHook::CallingWasm => calls.into_filter += 1,
                CallHook::ReturningFromHost | CallHook::ReturningFromWasm => {}
            }
            Ok(())
        });
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(anyhow::Error::from)
            .context("instantiating the filter")?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| anyhow!("filter exports no memory"))?;
        let alloc = instance
            .get_func(&mut store, "proxy_on_memory_allocate")
            .or_else(|| instance.get_func(&mut store, "malloc"));
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = alloc;
        let mut vm = Vm::new(store, instance, self.clone());
        for start in ["_initialize", "_start"] {
            if vm.has_export(start) {
                vm.call(start, &[])?;
                break;
            }
        }
        let root = vm.root_id();
        vm.store_mut().data_mut().current = root;
        vm.call("proxy_on_context_create", &[v(root), v(0)])?;
        let vm_config_len = vm.store_mut().data().options.vm_configuration.len() as u32;
        if vm.call("proxy_on_vm_start", &[v(root), v(vm_config_len)])? == Some(0) {
            bail!("the filter refused to start (proxy_on_vm_start returned false)");
        }
        Ok(vm)
    }

    /// A new VM's state. Each VM of a module gets its own random sequence (VMs tell each
    /// other apart by random tokens), yet runs stay repeatable: the seed is the VM's start
    /// order.
    fn new_state(&self, options: VmOptions, injected: Vec<Option<i32>>) -> HostState {
        let vm_index = {
            let mut state = lock(&self.shared);
            state.vms_started += 1;
            state.vms_started
        };
        HostState::new(self.shared.clone(), options, vm_index, injected)
    }

    /// The injected status of each import by index; an error for a name the host does not
    /// define, so a misspelt name cannot silently inject nothing.
    fn injected(&self, options: &VmOptions) -> Result<Vec<Option<i32>>> {
        if options.host_errors.is_empty() {
            return Ok(Vec::new());
        }
        let mut injected = vec![None; self.defined.len()];
        for (name, status) in &options.host_errors {
            let Some(index) = self.defined.iter().position(|(_, n)| n == name) else {
                bail!("VmOptions.host_errors: the host defines no import named `{name}`");
            };
            if let Some(slot) = injected.get_mut(index) {
                *slot = Some(*status);
            }
        }
        Ok(injected)
    }

    /// Every import the host defines, with its type, whether the module imports it or not.
    pub fn host_imports(&self) -> Result<Vec<HostImport>> {
        let state = HostState::new(self.shared.clone(), VmOptions::default(), 0, Vec::new());
        let mut store = Store::new(&self.engine, state);
        let mut imports = Vec::with_capacity(self.defined.len());
        for &(module, name) in self.defined.iter() {
            let ty = self
                .host
                .get(&mut store, module, name)
                .ok()
                .and_then(|e| e.into_func())
                .map(|f| f.ty(&store))
                .ok_or_else(|| anyhow!("the host lost its import {module}::{name}"))?;
            imports.push(HostImport { module, name, ty });
        }
        Ok(imports)
    }

    /// Every metric of every VM of this module, as Envoy aggregates them across workers.
    pub fn metrics(&self) -> Vec<Metric> {
        lock(&self.shared).metrics.clone()
    }

    /// The value of one metric by name, if defined.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.metrics()
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    /// Shared data by key: (value, cas).
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        lock(&self.shared).data.get(key).cloned()
    }

    /// Sets shared data from outside the VMs, as another filter in the same Envoy process
    /// could (no CAS check): how a test stages what the filter reads there.
    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        lock(&self.shared).set_data(key.to_owned(), value.to_vec(), 0);
    }
}
