//! `clawnode identity`: print `{instanceId, deviceId, publicKey}`.

use anyhow::Result;
use serde_json::json;

use super::IdentityArgs;
use crate::config::{Env, Flags, Settings};
use crate::identity::DeviceIdentity;

pub fn run(args: IdentityArgs) -> Result<()> {
    let settings = Settings::resolve(
        &Flags {
            config: args.common.config.clone(),
            state_dir: args.common.state_dir.clone(),
            ..Flags::default()
        },
        &Env::from_process(),
    )?;
    let (id, _) = DeviceIdentity::load_or_create(&settings.state_dir)?;
    if args.json {
        println!(
            "{}",
            json!({
                "instanceId": id.instance_id(),
                "deviceId": id.device_id(),
                "publicKey": id.public_key(),
            })
        );
    } else {
        println!("instanceId  {}", id.instance_id());
        println!("deviceId    {}", id.device_id());
        println!("publicKey   {}", id.public_key());
        println!("stateDir    {}", settings.state_dir.display());
    }
    Ok(())
}
