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

/// One signed node `connect` of `identity` from `source` (a loopback
/// address) with the join `token`, claiming `instance_id` (none: the row
/// is keyed by the device id): `accepted`, or the
/// detail code of the refusal (`PAIRING_REQUIRED`, `PAIRING_QUEUE_FULL`,
/// `DEVICE_REVOKED`, ...). Every step waits at most [`super::RAW_WAIT`].
pub async fn attempt_from(
    addr: std::net::SocketAddr,
    source: &str,
    identity: &clawnode::identity::DeviceIdentity,
    token: &clawnode::config::Secret,
    instance_id: Option<&str>,
) -> String {
    attempt_issued(addr, source, identity, token, instance_id)
        .await
        .0
}

/// [`attempt_from`], with the device token its `hello-ok` carried (an
/// accepted device's `auth.deviceToken`).
pub async fn attempt_issued(
    addr: std::net::SocketAddr,
    source: &str,
    identity: &clawnode::identity::DeviceIdentity,
    token: &clawnode::config::Secret,
    instance_id: Option<&str>,
) -> (String, Option<String>) {
    use clawnode::protocol::{ConnectChallenge, Frame};
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://{addr}");
    let attempt = async {
        let Ok(stream) = super::connect_from(source, addr).await else {
            return ("connect failed".to_string(), None);
        };
        let (mut ws, _) = match tokio_tungstenite::client_async(url.as_str(), stream).await {
            Ok(ok) => ok,
            Err(e) => return (format!("upgrade failed: {e}"), None),
        };
        let mut challenge = None;
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            match Frame::parse(&t) {
                Ok(Frame::Event(e)) if e.event == "connect.challenge" => {
                    challenge = serde_json::from_value::<ConnectChallenge>(e.payload).ok();
                    break;
                }
                _ => continue,
            }
        }
        let Some(challenge) = challenge else {
            return ("no challenge".into(), None);
        };
        let credentials = clawnode::agent::session::Credentials {
            shared: Some(token.clone()),
            device_token: None,
        };
        let client = node_client("flood", instance_id);
        let params = clawnode::agent::session::signed_node_connect(
            identity,
            client,
            &credentials,
            &challenge,
        );
        let connect = Frame::request("c1", "connect", &params);
        let _ = ws.send(Message::text(connect.to_text())).await;
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let Ok(Frame::Res(res)) = Frame::parse(&t) else {
                continue;
            };
            return match res.error {
                None => {
                    let issued = res
                        .payload
                        .as_ref()
                        .and_then(|p| p["auth"]["deviceToken"].as_str());
                    ("accepted".into(), issued.map(str::to_string))
                }
                Some(e) => match e.details.as_ref().and_then(|d| d["code"].as_str()) {
                    Some(code) => (code.to_string(), None),
                    None => (e.code.as_str().to_string(), None),
                },
            };
        }
        ("closed without an answer".into(), None)
    };
    super::wait_within("the answer to a device's connect", super::RAW_WAIT, attempt).await
}
