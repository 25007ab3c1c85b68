//! `clawnode check-config`: resolve the configuration exactly as `run`
//! would, check the token can be read, and print the effective settings as
//! TOML in the config file's own keys. The token itself is never printed.

use anyhow::Result;

use super::RunArgs;
use crate::config::{Env, Settings, TokenSource};

pub fn run(args: RunArgs) -> Result<()> {
    let settings = Settings::resolve(&args.flags(), &Env::from_process())?;
    let mut token_note = check_token(&settings)?;
    if let Some(gw) = settings
        .gateway
        .as_ref()
        .filter(|gw| gw.auth == crate::config::AuthMode::Token)
    {
        // As `run` reads it: a configured file must be readable.
        let note = match (&gw.operator_token, gw.operator_token.read()?) {
            (source, Some(_)) => format!("from {} (redacted)", source.describe()),
            (source, None) => format!(
                "none yet; the gateway generates {} on first start",
                source.describe().trim_start_matches("file ")
            ),
        };
        token_note.push_str(&format!("\n# operator token: {note}"));
    }
    // Loads the gateway's certificate and key as `run` would.
    let tls = match settings.gateway.as_ref().and_then(|g| g.tls.as_ref()) {
        Some(files) => Some(crate::tls::ServerTls::load(files)?),
        None => None,
    };
    let mut text = render(&settings, &token_note);
    if let Some(tls) = tls {
        text.push_str(&format!(
            "# TLS certificate fingerprint (pin it on agents with --tls-fingerprint): {}\n",
            tls.fingerprint
        ));
    }
    print!("{text}");
    Ok(())
}

/// Reads the token like `run` does; says where it comes from. An agent
/// without a readable join token is fine once it holds a device token for
/// its gateway, as in `run`.
fn check_token(settings: &Settings) -> Result<String> {
    let token = match settings.token.read() {
        Err(e) if settings.gateway.is_none() => {
            let stored = crate::agent::device_token::DeviceTokenStore::new(&settings.state_dir);
            if !stored.has_token_for(&settings.url) {
                return Err(e);
            }
            return Ok(format!(
                "token: no join token ({}); connects with the device token stored for {}",
                crate::safe_text::escape(&format!("{e:#}")),
                settings.url
            ));
        }
        read => read?,
    };
    Ok(match (&settings.token, token, &settings.gateway) {
        (source, Some(_), _) => format!("token: from {} (redacted)", source.describe()),
        (TokenSource::StateDirDefault(path), None, Some(_)) => format!(
            "token: none yet; the gateway generates {} on first start",
            path.display()
        ),
        (_, None, Some(_)) => "token: none".into(),
        (_, None, None) => {
            "token: none configured; only a gateway with auth = \"none\" accepts this agent".into()
        }
    })
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The effective settings as TOML (with comments for what has no key).
pub fn render(s: &Settings, token_note: &str) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line("# clawnode check-config: the configuration is valid".into());
    line(match &s.config_file {
        Some(p) => format!("# config file: {}", p.display()),
        None => "# config file: none (built-in defaults)".into(),
    });
    line(format!(
        "# role: {}",
        if s.gateway.is_some() {
            "gateway"
        } else {
            "agent"
        }
    ));
    line(format!("# {token_note}"));
    line(format!("url = {}", quote(&s.url)));
    match &s.client_tls.fingerprint {
        Some(f) => line(format!("tls_fingerprint = {}", quote(&f.to_string()))),
        None => {
            line("# tls_fingerprint: none (wss:// is verified against the system roots)".into())
        }
    }
    line(format!(
        "allow_insecure_ws = {}",
        s.client_tls.allow_insecure_ws
    ));
    match &s.token {
        TokenSource::File(p) | TokenSource::StateDirDefault(p) => {
            line(format!("token_file = {}", quote(&p.to_string_lossy())))
        }
        TokenSource::LocalGateway(candidates) => line(format!(
            "# token_file: the local gateway's, the first of {}",
            crate::config::path_list(candidates)
        )),
        TokenSource::Env { .. } => {}
    }
    match &s.display_name {
        Some(n) => line(format!("display_name = {}", quote(n))),
        None => line("# display_name: the system host name".into()),
    }
    line(format!(
        "state_dir = {}",
        quote(&s.state_dir.to_string_lossy())
    ));
    for l in s.agent.lines() {
        line(l);
    }
    line(format!(
        "log_level = {}",
        quote(s.log_level.as_deref().unwrap_or("info"))
    ));
    line(format!("log_format = {}", quote(s.log_format.as_str())));
    line(String::new());
    line("[gateway]".into());
    line(format!("enabled = {}", s.gateway.is_some()));
    if let Some(g) = &s.gateway {
        line(format!("listen = {}", quote(&g.listen.to_string())));
        line(format!(
            "auth = {}",
            quote(match g.auth {
                crate::config::AuthMode::Token => "token",
                crate::config::AuthMode::None => "none",
            })
        ));
        match g.operator_token.file() {
            Some(p) => {
                line(
                    "# The operator credential (any role; the token above grants role node only)"
                        .into(),
                );
                line(format!(
                    "operator_token_file = {}",
                    quote(&p.to_string_lossy())
                ));
            }
            None => line(format!(
                "# operator_token_file: {}",
                g.operator_token.describe()
            )),
        }
        let list = |items: Vec<String>| {
            let quoted: Vec<String> = items.iter().map(|i| quote(i)).collect();
            format!("[{}]", quoted.join(", "))
        };
        line(
            "# Host names served besides public_names: localhost, this host's name, any IP address"
                .into(),
        );
        line(format!(
            "public_names = {}",
            list(g.public_names.iter().map(ToString::to_string).collect())
        ));
        line("# WebSocket origins allowed besides the gateway's own pages".into());
        line(format!(
            "allowed_origins = {}",
            list(g.allowed_origins.iter().map(ToString::to_string).collect())
        ));
        line(
            "# Networks whose new devices are approved on first use (admission = \"manual\")"
                .into(),
        );
        line(format!(
            "admission_cidrs = {}",
            list(g.admission_cidrs.iter().map(ToString::to_string).collect())
        ));
        for l in g.tuning.lines() {
            line(l);
        }
        match &g.tls {
            Some(files) => {
                line(format!(
                    "tls_cert = {}",
                    quote(&files.cert.to_string_lossy())
                ));
                line(format!("tls_key = {}", quote(&files.key.to_string_lossy())));
            }
            None => line("# tls_cert, tls_key: none (plaintext ws://)".into()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Flags};

    #[test]
    fn output_is_a_config_file_that_parses_back_and_hides_env_tokens() {
        let env = Env::from_pairs(&[("HOME", "/h"), ("CLAWNODE_TOKEN", "s3cret-token")], false);
        let flags = Flags {
            gateway: true,
            listen: Some("127.0.0.1:9".into()),
            display_name: Some("web \"01\"".into()),
            ..Flags::default()
        };
        let s = Settings::resolve(&flags, &env).unwrap();
        let note = check_token(&s).unwrap();
        let text = render(&s, &note);
        assert!(!text.contains("s3cret-token"), "{text}");
        assert!(text.contains("environment variable CLAWNODE_TOKEN (redacted)"));
        let back = FileConfig::parse(&text).unwrap();
        assert_eq!(back.display_name.as_deref(), Some("web \"01\""));
        assert_eq!(back.gateway.enabled, Some(true));
        assert_eq!(back.gateway.listen.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(back.token_file, None);
    }

    #[test]
    fn an_unreadable_token_file_is_an_error() {
        let env = Env::from_pairs(&[("HOME", "/h")], false);
        let flags = Flags {
            token_file: Some("/nonexistent/clawnode.token".into()),
            ..Flags::default()
        };
        let s = Settings::resolve(&flags, &env).unwrap();
        let e = format!("{:#}", check_token(&s).unwrap_err());
        assert!(e.contains("/nonexistent/clawnode.token"), "{e}");
    }
}
