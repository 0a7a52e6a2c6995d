//! One value nft will not take must cost only the endpoints that use it: long names program,
//! a profile the kernel refuses fails closed for its endpoints, and the rest of the host keeps
//! being updated.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use calico_dataplane::nft::names::profile_chain;
use calico_dataplane::nft::FirewallError;
use calico_dataplane::{netns, Dataplane, Firewall, LinuxDataplane, NftCli};
use calico_felix::{CalcGraph, EndpointPolicy};
use common::{profile, put, OneHost};

/// The real nft, except that it refuses any script holding `poison`: a stand-in for whatever
/// object a future kernel or nft might refuse.
struct Poisoned {
    poison: String,
}

impl Poisoned {
    fn refuse(&self, script: &str) -> Result<(), FirewallError> {
        match script.contains(&self.poison) {
            true => Err(FirewallError::Rejected(format!(
                "Error: Could not process rule: {} (simulated)",
                self.poison
            ))),
            false => Ok(()),
        }
    }
}

impl Firewall for Poisoned {
    fn apply(&self, script: &str) -> Result<(), FirewallError> {
        self.refuse(script)?;
        NftCli::default().apply(script)
    }
    fn check(&self, script: &str) -> Result<(), FirewallError> {
        self.refuse(script)?;
        NftCli::default().check(script)
    }
    fn table_exists(&self) -> Result<bool, FirewallError> {
        NftCli::default().table_exists()
    }
}

fn endpoint(graph: &mut CalcGraph, name: &str, id: &str, ip: &str, profile: &str) {
    let key = format!("/calico/v1/host/h/workload/docker/{name}/endpoint/{id}");
    let value = format!(
        r#"{{"state":"active","name":"cali{}","profile_ids":["{profile}"],"ipv4_nets":["{ip}/32"]}}"#,
        &id[..11]
    );
    put(graph, &key, &value);
}

/// Open to every workload in the test (all of them carry tag ALL).
const OPEN: &str = r#"{"inbound_rules":[{"action":"allow","src_tag":"ALL"}],"outbound_rules":[{"action":"allow"}]}"#;

fn tagged_all(graph: &mut CalcGraph, name: &str) {
    profile(graph, name, OPEN);
    put(
        graph,
        &format!("/calico/v1/policy/profile/{name}/tags"),
        r#"["ALL"]"#,
    );
}

#[test]
fn a_refused_profile_costs_only_its_endpoints_and_later_changes_land() {
    let mut lab = OneHost::new(true);
    lab.add("A", "192.168.0.1", "aaaaaaaaaaaaaaaa");
    lab.add("B", "192.168.0.2", "bbbbbbbbbbbbbbbb");
    lab.add("C", "192.168.0.3", "cccccccccccccccc");
    lab.add("D", "192.168.0.4", "dddddddddddddddd");
    lab.add("E", "192.168.0.5", "eeeeeeeeeeeeeeee");
    let lab = Arc::new(lab);
    let long = "L".repeat(calico_model::names::NAME_MAX);
    let too_long = "T".repeat(300);
    let mut graph = CalcGraph::new("h");
    tagged_all(&mut graph, "ALL");
    tagged_all(&mut graph, &long);
    tagged_all(&mut graph, "POISON");
    tagged_all(&mut graph, &too_long);
    endpoint(&mut graph, "A", "aaaaaaaaaaaaaaaa", "192.168.0.1", "ALL");
    // The longest name the model allows programs like any other.
    endpoint(&mut graph, "B", "bbbbbbbbbbbbbbbb", "192.168.0.2", &long);
    // nft refuses C's profile.
    endpoint(&mut graph, "C", "cccccccccccccccc", "192.168.0.3", "POISON");
    // E names a profile longer than the model allows: the endpoint is invalid, so unwired.
    endpoint(
        &mut graph,
        "E",
        "eeeeeeeeeeeeeeee",
        "192.168.0.5",
        &too_long,
    );
    let first = graph.desired();
    assert!(
        first
            .skipped
            .keys()
            .any(|k| k.contains("/workload/docker/E/")),
        "{:?}",
        first.skipped
    );
    // D appears later: an unrelated change that must still land.
    endpoint(&mut graph, "D", "dddddddddddddddd", "192.168.0.4", "ALL");
    let second = graph.desired();
    assert!(
        matches!(
            second.endpoints["caliccccccccccc"].policy,
            EndpointPolicy::Profiles(_)
        ),
        "the calc graph has nothing against C: only nft refuses it"
    );

    let poison = profile_chain("POISON", true);
    let path = PathBuf::from(format!("/var/run/netns/{}", lab.host.name));
    let seen = lab.clone();
    let (failed_first, failed_second, reachability) = netns::run_in(&path, move || async move {
        let mut dataplane = LinuxDataplane::new(Arc::new(Poisoned { poison })).unwrap();
        let failed_first = dataplane.apply(&first).await.unwrap().failed_closed;
        let before_d = [
            seen.pings("A", "B"),
            seen.pings("B", "A"),
            seen.pings("C", "A"),
            seen.pings("A", "C"),
            seen.pings("E", "A"),
        ];
        let failed_second = dataplane.apply(&second).await.unwrap().failed_closed;
        let after_d = [
            seen.pings("D", "A"),
            seen.pings("A", "D"),
            seen.pings("C", "D"),
        ];
        (failed_first, failed_second, (before_d, after_d))
    })
    .unwrap();
    let (before_d, after_d) = reachability;
    assert_eq!(
        before_d,
        [true, true, false, false, false],
        "A↔B, C and E cut off"
    );
    assert_eq!(
        after_d,
        [true, true, false],
        "D wired after the refusal; C still cut off"
    );
    for failed in [&failed_first, &failed_second] {
        assert_eq!(failed.keys().collect::<Vec<_>>(), ["caliccccccccccc"]);
        let reason = &failed["caliccccccccccc"];
        assert!(reason.contains("nft refused profile POISON"), "{reason}");
    }
    // The kernel's table names the long profile's chain by its hash, its name in a comment.
    let chain = profile_chain(&long, true);
    let listed = lab
        .host
        .run("nft", &["list", "chain", "inet", "calico", &chain]);
    assert!(
        listed.contains(&format!("comment \"profile {}", &long[..60])),
        "{listed}"
    );
}
