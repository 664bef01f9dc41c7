//! What the CLI's integration tests share: running the built `rollout` binary.

use std::process::{Command, Output};

use host_test::testing::workspace_root;

/// Runs `rollout ARGS` from the workspace root.
pub(crate) fn rollout(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rollout"))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("the rollout binary runs")
}

/// Output bytes as text.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
