//! `clawnode forget <instanceId>`: drop an instance id's pin on the gateway
//! (see `gateway::registry`). Asks the running gateway (operator.admin);
//! when no gateway runs on this host, edits its registry directly.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::ForgetArgs;
use crate::gateway::registry::{self, Pin};
use crate::protocol::{method, scope};
use crate::safe_text::escape;

pub async fn run(args: ForgetArgs) -> Result<()> {
    let id = args.instance_id.trim();
    if id.is_empty() {
        bail!("the instance id is empty");
    }
    let (settings, url, tls) =
        super::operator_target(&args.common, &args.url, &args.token_file, &args.client_tls)?;
    let token = settings.token.read()?;
    let state_dir = &settings.state_dir;
    let answer = crate::client::call_with_scopes(
        &url,
        &tls,
        token.as_ref(),
        &[scope::OPERATOR_ADMIN],
        method::INSTANCE_FORGET,
        json!({ "instanceId": id }),
    )
    .await;
    let removed: Option<Pin> = match answer {
        Ok(payload) => {
            let pin = payload.get("pin").cloned().unwrap_or(Value::Null);
            serde_json::from_value(pin).unwrap_or(None)
        }
        // No gateway to ask, but its registry is here: edit it directly.
        Err(e) if is_unreachable(&e) && registry::exists_in(state_dir) => {
            let removed = registry::forget_offline(state_dir, id)?;
            eprintln!(
                "gateway {url} is not running; updated {} directly",
                state_dir.join(registry::REGISTRY_FILE).display()
            );
            removed
        }
        Err(e) => return Err(e),
    };
    match removed {
        Some(pin) => println!(
            "forgot instance {id}: it was pinned to device {}{}; the next key that connects with it will be pinned",
            escape(&pin.device_id),
            pin.display_name
                .map(|n| format!(" ({})", escape(&n)))
                .unwrap_or_default()
        ),
        None => println!("instance {id} was not pinned; nothing to forget"),
    }
    Ok(())
}

/// Whether the call failed before reaching a gateway (nothing listening).
fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}
