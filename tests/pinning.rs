//! Pinning covers every presence key a client can claim (issue 15, finding
//! 7), with the real binary: a row keyed by a device id belongs to that
//! device, and the row of an operator without a device (the Instances
//! page) lives where no node can claim it.

mod common;

use clawnode::identity::DeviceIdentity;
use clawnode::protocol::PresenceEntry;
use common::node::connect_node;
use common::*;

fn roles(e: &PresenceEntry) -> Vec<String> {
    e.roles.clone().unwrap_or_default()
}

fn refused_as_pinned(outcome: Outcome, what: &str) {
    match outcome {
        Outcome::Error(e, _) => assert_eq!(
            e.detail_code_str(),
            Some("INSTANCE_ID_PINNED"),
            "{what}: {e:?}"
        ),
        other => panic!("{what} was let in: {other:?}"),
    }
}

/// A node that sends no `instanceId` has a row keyed by its device id —
/// which every node reads in `system-presence`. Another key claiming that
/// id as its `instanceId` is refused like any pinned instance id, and an
/// operator without a device that claims it gets a row of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_keyed_by_a_device_id_belongs_to_that_device() {
    let gw = TestGateway::start(&[]);
    let victim = DeviceIdentity::ephemeral("unused");
    let victim_id = victim.device_id().to_string();
    let (_victim_conn, outcome) = connect_node(&gw, &victim, "victim", None).await;
    assert!(matches!(outcome, Outcome::Hello(_)), "{outcome:?}");

    let attacker = DeviceIdentity::ephemeral("unused");
    let (_, outcome) = connect_node(&gw, &attacker, "attacker", Some(&victim_id)).await;
    refused_as_pinned(outcome, "another key claiming the victim's device id");
    // Instance ids match case-insensitively: so does the refusal.
    let upper = victim_id.to_uppercase();
    let (_, outcome) = connect_node(&gw, &attacker, "attacker", Some(&upper)).await;
    refused_as_pinned(outcome, "the upper-case device id");

    // An operator without a device claiming the device id as its instance
    // id: its row is its own, the victim's row is untouched.
    let _op = open_operator(&gw, "ui", Some(&victim_id), &["operator.read"]).await;
    let list = gw.presence().await;
    let victim_rows: Vec<_> = list
        .iter()
        .filter(|e| e.device_id.as_deref() == Some(victim_id.as_str()))
        .collect();
    assert_eq!(victim_rows.len(), 1, "{list:#?}");
    let row = victim_rows[0];
    assert_eq!(row.host.as_deref(), Some("victim"), "{row:#?}");
    assert_eq!(row.mode.as_deref(), Some("node"), "{row:#?}");
    assert_eq!(roles(row), ["node"], "{row:#?}");
    assert!(
        list.iter().all(|e| e.host.as_deref() != Some("attacker")),
        "{list:#?}"
    );

    // The victim itself reconnects to its row.
    drop(_victim_conn);
    let (_again, outcome) = connect_node(&gw, &victim, "victim", None).await;
    assert!(matches!(outcome, Outcome::Hello(_)), "{outcome:?}");
}

/// The Instances page is an operator without a device identity: nothing to
/// pin its `instanceId` to. A node claiming the page's `instanceId` (it is
/// in every `system-presence` answer) must neither merge into the page's
/// row nor lock the page out of its own row.
#[tokio::test(flavor = "multi_thread")]
async fn the_instances_page_row_cannot_be_squatted_by_a_node() {
    let gw = TestGateway::start(&[]);
    let page_id = "5b0c6d2e-6f7a-4e3b-9a51-0c2d3e4f5a6b";
    let page = open_operator(&gw, "ui", Some(page_id), &["operator.read"]).await;

    let squatter = DeviceIdentity::ephemeral("unused");
    let squatter_id = squatter.device_id().to_string();
    let (_squat, _) = connect_node(&gw, &squatter, "squatter", Some(page_id)).await;

    // The page reloads: it gets its row back.
    drop(page);
    let mut again = RawClient::open(&gw.url()).await;
    let outcome = again
        .connect(&operator_params(
            "ui",
            Some(page_id),
            &["operator.read"],
            Some(&gw.token()),
        ))
        .await;
    assert!(
        matches!(outcome, Outcome::Hello(_)),
        "the page was locked out of its own row: {outcome:?}"
    );

    let list = gw.presence().await;
    let page_rows: Vec<_> = list
        .iter()
        .filter(|e| e.instance_id.as_deref() == Some(page_id) && e.device_id.is_none())
        .collect();
    assert_eq!(page_rows.len(), 1, "{list:#?}");
    assert_eq!(roles(page_rows[0]), ["operator"], "{list:#?}");
    assert_ne!(page_rows[0].reason.as_deref(), Some("disconnect"));
    // Whatever the squatter was told, its row (if any) is its own.
    for row in list
        .iter()
        .filter(|e| e.device_id.as_deref() == Some(squatter_id.as_str()))
    {
        assert_eq!(roles(row), ["node"], "{row:#?}");
        assert_eq!(row.host.as_deref(), Some("squatter"), "{row:#?}");
    }
}
