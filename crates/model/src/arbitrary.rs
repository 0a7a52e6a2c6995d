//! Proptest strategies that generate valid model values (feature `arbitrary`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use crate::ports::PortRange;
use crate::rule::{Action, Protocol, Rule, ICMP_MAX};

pub fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,11}"
}

fn port_range() -> impl Strategy<Value = PortRange> {
    (any::<u16>(), 0u16..2000).prop_map(|(low, span)| PortRange {
        low,
        high: low.saturating_add(span % 3 * span),
    })
}

fn net(v4: bool) -> BoxedStrategy<IpNet> {
    if v4 {
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, len)| {
                IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), len)
                    .unwrap()
                    .trunc()
            })
            .boxed()
    } else {
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, len)| {
                IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), len)
                    .unwrap()
                    .trunc()
            })
            .boxed()
    }
}

/// A valid rule, normalized, as `rule add` would store it.
pub fn rule() -> impl Strategy<Value = Rule> {
    let protocol = prop_oneof![
        Just(None),
        Just(Some(Protocol::Tcp)),
        Just(Some(Protocol::Udp)),
        Just(Some(Protocol::Icmp)),
        Just(Some(Protocol::Icmpv6)),
    ];
    (protocol, any::<bool>()).prop_flat_map(|(protocol, v4_choice)| {
        let v4 = protocol
            .and_then(Protocol::implied_ip_version)
            .map_or(v4_choice, |v| v == 4);
        let with_ports = protocol.is_some_and(Protocol::has_ports);
        let ports = move || {
            if with_ports {
                proptest::collection::vec(port_range(), 0..4).boxed()
            } else {
                Just(Vec::new()).boxed()
            }
        };
        let icmp = if protocol.is_some_and(Protocol::is_icmp) {
            proptest::option::of((0..=ICMP_MAX, proptest::option::of(0..=ICMP_MAX))).boxed()
        } else {
            Just(None).boxed()
        };
        (
            any::<bool>(),
            proptest::option::of(name()),
            proptest::option::of(net(v4)),
            ports(),
            proptest::option::of(name()),
            proptest::option::of(net(v4)),
            ports(),
            icmp,
            any::<bool>(),
        )
            .prop_map(
                move |(
                    allow,
                    src_tag,
                    src_net,
                    src_ports,
                    dst_tag,
                    dst_net,
                    dst_ports,
                    icmp,
                    pin,
                )| {
                    let mut rule = Rule {
                        protocol,
                        src_tag,
                        src_net,
                        src_ports,
                        dst_tag,
                        dst_net,
                        dst_ports,
                        icmp_type: icmp.map(|(t, _)| t),
                        icmp_code: icmp.and_then(|(_, c)| c),
                        ..Rule::new(if allow { Action::Allow } else { Action::Deny })
                    };
                    // Pin a version only where nothing else implies one (the grammar's `ipv4|ipv6`).
                    if pin && rule.implied_ip_version().is_none() {
                        rule.ip_version = Some(if v4 { 4 } else { 6 });
                    }
                    rule
                },
            )
    })
}
