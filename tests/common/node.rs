//! Raw signed node connections for tests: a device identity of our own
//! choosing, with or without an `instanceId`, through the agent's own
//! `connect` builder (so the signature is what a real agent sends).

use clawnode::agent::session::{signed_node_connect, Credentials};
use clawnode::config::Secret;
use clawnode::identity::DeviceIdentity;
use clawnode::protocol::{ClientInfo, ConnectParams};

use super::{Outcome, RawClient, TestGateway};

/// A node's `client` block shown as `host`, claiming `instance_id` (none:
/// the row is keyed by the device id).
pub fn node_client(host: &str, instance_id: Option<&str>) -> ClientInfo {
    ClientInfo {
        id: "node-host".into(),
        display_name: Some(host.into()),
        version: "9.9.9".into(),
        platform: "linux".into(),
        device_family: Some("Linux".into()),
        model_identifier: None,
        mode: "node".into(),
        instance_id: instance_id.map(str::to_string),
    }
}

/// The signed `connect` of `identity` for `c`'s challenge, with the
/// gateway's token.
pub fn signed_params(
    gw: &TestGateway,
    c: &RawClient,
    identity: &DeviceIdentity,
    client: ClientInfo,
) -> ConnectParams {
    let credentials = Credentials {
        shared: Some(gw.token()),
        device_token: None,
    };
    signed_node_connect(identity, client, &credentials, &c.challenge)
}

/// A node's signed `connect` for `c`'s challenge as our agent sends it:
/// `identity`'s own instance id, the shared `token`.
pub fn node_params(c: &RawClient, identity: &DeviceIdentity, token: &Secret) -> ConnectParams {
    let credentials = Credentials {
        shared: Some(token.clone()),
        device_token: None,
    };
    let client = node_client("raw-node", Some(identity.instance_id()));
    signed_node_connect(identity, client, &credentials, &c.challenge)
}

/// Opens a connection and sends the signed `connect` of `identity` as a
/// node shown as `host` claiming `instance_id`; returns the connection and
/// how the handshake ended.
pub async fn connect_node(
    gw: &TestGateway,
    identity: &DeviceIdentity,
    host: &str,
    instance_id: Option<&str>,
) -> (RawClient, Outcome) {
    let mut c = RawClient::open(&gw.url()).await;
    let params = signed_params(gw, &c, identity, node_client(host, instance_id));
    let outcome = c.connect(&params).await;
    (c, outcome)
}
