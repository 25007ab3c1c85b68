//! Every invalid setting, from the config file, a flag or the environment,
//! is refused with one line that names the setting and the accepted form.
//! The cases are data: `tests/cases/invalid_settings.json`.

mod common;

use std::process::Command;

use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    /// Config file text.
    #[serde(default)]
    config: Option<String>,
    /// Extra arguments to `check-config --gateway`.
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    /// Contents of a token file passed with --token-file.
    #[serde(default)]
    token_file: Option<String>,
    /// Leave out `--state-dir` (so the config's state_dir is used).
    #[serde(default)]
    no_state_flag: bool,
    /// Expected exit code (1 for bad settings, 2 for bad usage).
    #[serde(default = "one")]
    exit: i32,
    /// Substrings the error line must hold.
    expect: Vec<String>,
}

fn one() -> i32 {
    1
}

#[test]
fn every_invalid_setting_gets_one_line_naming_it_and_the_accepted_form() {
    let cases: Vec<Case> =
        serde_json::from_str(include_str!("cases/invalid_settings.json")).expect("cases parse");
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for case in &cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("clawnode.toml");
        std::fs::write(&config, case.config.as_deref().unwrap_or("")).unwrap();
        let mut cmd = Command::new(common::BIN);
        cmd.env_remove("CLAWNODE_URL")
            .env_remove("CLAWNODE_TOKEN")
            .env_remove("CLAWNODE_TOKEN_FILE")
            .env_remove("OPENCLAW_GATEWAY_TOKEN")
            .env_remove("CLAWNODE_LOG_FORMAT")
            .env_remove("RUST_LOG")
            .env("CLAWNODE_CONFIG", &config)
            .arg("check-config")
            .arg("--gateway");
        if !case.no_state_flag {
            cmd.arg("--state-dir").arg(dir.path().join("state"));
        }
        if let Some(text) = &case.token_file {
            let tf = dir.path().join("token");
            std::fs::write(&tf, text).unwrap();
            cmd.arg("--token-file").arg(&tf);
        }
        for arg in &case.args {
            cmd.arg(if arg == "LONG300" {
                "x".repeat(300)
            } else {
                arg.clone()
            });
        }
        cmd.envs(&case.env);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let code = out.status.code().unwrap_or(-1);
        let problem = if code != case.exit {
            Some(format!("exit {code}, expected {}", case.exit))
        } else if lines.len() != 1 {
            Some(format!("{} lines on stderr", lines.len()))
        } else if !lines[0].starts_with("clawnode: ") {
            Some("not a clawnode error line".into())
        } else {
            case.expect
                .iter()
                .find(|e| !lines[0].contains(e.as_str()))
                .map(|e| format!("missing {e:?}"))
        };
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}\n    stderr: {stderr}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
