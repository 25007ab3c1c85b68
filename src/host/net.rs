//! Primary IP selection: default-route interface first, then any usable
//! address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// Kernel IPv4 routing table.
const PROC_NET_ROUTE: &str = "/proc/net/route";

/// `RTF_UP`: the route is usable.
const RTF_UP: u32 = 0x0001;
/// `RTF_REJECT`: an unreachable/prohibit route, not a way out.
const RTF_REJECT: u32 = 0x0200;

/// The host's primary non-loopback address: the IPv4 address of the
/// default-route interface, else the first usable IPv4 address (not
/// loopback, link-local, unspecified, broadcast or multicast) of any running
/// interface, else the first usable IPv6 address (not loopback, link-local
/// `fe80::/10`, unspecified or multicast), else `None`.
///
/// Only interfaces the kernel reports as running (`IFF_RUNNING`) are
/// considered. Never fails: unreadable routing tables or interface lists
/// just narrow the choice.
pub fn primary_ip() -> Option<IpAddr> {
    let default_iface = std::fs::read_to_string(Path::new(PROC_NET_ROUTE))
        .ok()
        .and_then(|table| default_route_interface(&table));
    let addrs: Vec<(String, IpAddr)> = if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .filter(|iface| iface.is_oper_up())
        .map(|iface| {
            let ip = iface.ip();
            (iface.name, ip)
        })
        .collect();
    choose_primary_ip(default_iface.as_deref(), &addrs)
}

/// The interface carrying the default IPv4 route, from the contents of
/// `/proc/net/route`: among lines with destination and mask `00000000`,
/// the `RTF_UP` flag and no `RTF_REJECT` flag, the one with the lowest
/// metric (first wins ties). Header and malformed lines are skipped.
pub fn default_route_interface(proc_net_route: &str) -> Option<String> {
    let mut best: Option<(u32, &str)> = None;
    for line in proc_net_route.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        let [iface, destination, _gateway, flags, _refcnt, _use, metric, mask, ..] = fields[..]
        else {
            continue;
        };
        if destination != "00000000" || iface == "*" {
            continue;
        }
        if u32::from_str_radix(mask, 16) != Ok(0) {
            continue;
        }
        let Ok(flags) = u32::from_str_radix(flags, 16) else {
            continue;
        };
        if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 {
            continue;
        }
        let Ok(metric) = metric.parse::<u32>() else {
            continue;
        };
        if best.is_none_or(|(best_metric, _)| metric < best_metric) {
            best = Some((metric, iface));
        }
    }
    best.map(|(_, iface)| iface.to_string())
}

/// Chooses the primary address from `(interface, address)` pairs: a usable
/// IPv4 address on `default_iface`, else the first usable IPv4 address, else
/// the first usable IPv6 address (see [`primary_ip`] for "usable").
pub fn choose_primary_ip(
    default_iface: Option<&str>,
    addrs: &[(String, IpAddr)],
) -> Option<IpAddr> {
    let v4 = |ip: &IpAddr| matches!(ip, IpAddr::V4(v4) if usable_v4(v4));
    let v6 = |ip: &IpAddr| matches!(ip, IpAddr::V6(v6) if usable_v6(v6));
    default_iface
        .and_then(|default| {
            addrs
                .iter()
                .find(|(name, ip)| name == default && v4(ip))
                .map(|(_, ip)| *ip)
        })
        .or_else(|| addrs.iter().map(|(_, ip)| *ip).find(v4))
        .or_else(|| addrs.iter().map(|(_, ip)| *ip).find(v6))
}

fn usable_v4(ip: &Ipv4Addr) -> bool {
    !(ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast())
}

fn usable_v6(ip: &Ipv6Addr) -> bool {
    let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    fn table(rows: &[&str]) -> String {
        let mut text = HEADER.to_string();
        for row in rows {
            text.push_str(row);
            text.push('\n');
        }
        text
    }

    #[test]
    fn single_default_route() {
        let text = table(&[
            "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
            "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
        ]);
        assert_eq!(default_route_interface(&text).as_deref(), Some("eth0"));
    }

    #[test]
    fn lowest_metric_default_route_wins() {
        let text = table(&[
            "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0",
            "enp3s0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0",
            "wwan0\t00000000\t01000064\t0003\t0\t0\t700\t00000000\t0\t0\t0",
            "enp3s0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0",
        ]);
        assert_eq!(default_route_interface(&text).as_deref(), Some("enp3s0"));
    }

    #[test]
    fn equal_metrics_keep_the_first() {
        let text = table(&[
            "eth1\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0",
            "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
        ]);
        assert_eq!(default_route_interface(&text).as_deref(), Some("eth1"));
    }

    #[test]
    fn no_default_route() {
        let text = table(&[
            "eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0",
            "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0",
        ]);
        assert_eq!(default_route_interface(&text), None);
        assert_eq!(default_route_interface(HEADER), None);
        assert_eq!(default_route_interface(""), None);
    }

    #[test]
    fn down_reject_and_masked_defaults_are_ignored() {
        let text = table(&[
            // flags 0x0002 (gateway) without RTF_UP
            "eth9\t00000000\t0100000A\t0002\t0\t0\t0\t00000000\t0\t0\t0",
            // unreachable default: RTF_UP|RTF_REJECT on "*"
            "*\t00000000\t00000000\t0201\t0\t0\t0\t00000000\t0\t0\t0",
            // destination 0 with a non-zero mask is not a default route
            "tun0\t00000000\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0",
            "eth0\t00000000\t0101A8C0\t0003\t0\t0\t50\t00000000\t0\t0\t0",
        ]);
        assert_eq!(default_route_interface(&text).as_deref(), Some("eth0"));
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let text = table(&[
            "garbage",
            "",
            "eth7\t00000000\t0100000A\tzz\t0\t0\t0\t00000000\t0\t0\t0",
            "eth8\t00000000\t0100000A\t0003\t0\t0\t-1\t00000000\t0\t0\t0",
            "eth6\t00000000\t0100000A\t0003",
            "\u{fffd}\u{0}\t\t\t",
            "eth0\t00000000\t0101A8C0\t0003\t0\t0\t10\t00000000\t0\t0\t0",
        ]);
        assert_eq!(default_route_interface(&text).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("not a route table at all"), None);
    }

    fn pair(iface: &str, ip: &str) -> (String, IpAddr) {
        (iface.to_string(), ip.parse().unwrap())
    }

    #[test]
    fn default_interface_ipv4_wins() {
        let addrs = [
            pair("lo", "127.0.0.1"),
            pair("docker0", "172.17.0.1"),
            pair("eth0", "fe80::1"),
            pair("eth0", "169.254.3.4"),
            pair("eth0", "192.168.1.20"),
            pair("eth0", "2001:db8::20"),
        ];
        assert_eq!(
            choose_primary_ip(Some("eth0"), &addrs),
            Some("192.168.1.20".parse().unwrap())
        );
    }

    #[test]
    fn first_usable_ipv4_without_default_route() {
        let addrs = [
            pair("lo", "127.0.0.1"),
            pair("lo", "::1"),
            pair("eth0", "169.254.3.4"),
            pair("eth0", "2001:db8::20"),
            pair("wlan0", "10.0.0.7"),
            pair("docker0", "172.17.0.1"),
        ];
        assert_eq!(
            choose_primary_ip(None, &addrs),
            Some("10.0.0.7".parse().unwrap())
        );
        // A default interface without a usable IPv4 falls through too.
        assert_eq!(
            choose_primary_ip(Some("eth0"), &addrs),
            Some("10.0.0.7".parse().unwrap())
        );
        assert_eq!(
            choose_primary_ip(Some("ppp9"), &addrs),
            Some("10.0.0.7".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_fallback_skips_loopback_and_link_local() {
        let addrs = [
            pair("lo", "127.0.0.1"),
            pair("lo", "::1"),
            pair("eth0", "fe80::a00:27ff:fe4e:66a1"),
            pair("eth0", "febf::1"),
            pair("eth0", "2001:db8::20"),
        ];
        assert_eq!(
            choose_primary_ip(Some("eth0"), &addrs),
            Some("2001:db8::20".parse().unwrap())
        );
    }

    #[test]
    fn nothing_usable_is_none() {
        let addrs = [
            pair("lo", "127.0.0.1"),
            pair("lo", "::1"),
            pair("eth0", "169.254.0.9"),
            pair("eth0", "fe80::1"),
            pair("eth1", "0.0.0.0"),
        ];
        assert_eq!(choose_primary_ip(Some("eth0"), &addrs), None);
        assert_eq!(choose_primary_ip(None, &[]), None);
    }

    #[test]
    fn primary_ip_on_this_machine_is_not_loopback() {
        if let Some(ip) = primary_ip() {
            assert!(!ip.is_loopback(), "{ip}");
        }
    }
}
