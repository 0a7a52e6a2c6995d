//! etcd as a three-member cluster: agents and calicoctl ride out a lost member, keep the
//! kernel as it is while the quorum is lost (and say so), and catch up when it returns.

mod common;

use common::{until, TestLab};

fn health(lab: &TestLab, host: &str) -> String {
    let out = lab.on(host, &["curl", "-s", "127.0.0.1:9099/health"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_profile(lab: &TestLab, host: &str, name: &str, ip: &str) {
    lab.workload(host, name, ip);
    lab.calicoctl(host, &format!("container {name} profile set P"));
}

#[test]
fn agents_ride_out_a_lost_member_and_wait_out_a_lost_quorum() {
    let lab = TestLab::reserve();
    lab.lab(&["up", "--hosts", "2", "--etcd", "3"]);
    let env = String::from_utf8_lossy(&lab.on("calico-01", &["printenv", "ETCD_ENDPOINTS"]).stdout)
        .into_owned();
    assert_eq!(
        env.trim(),
        "http://172.17.8.1:2379,http://172.17.8.2:2379,http://172.17.8.3:2379",
        "hosts are given every member"
    );
    lab.calicoctl("calico-01", "profile add P");
    in_profile(&lab, "calico-01", "a", "192.168.0.1");
    in_profile(&lab, "calico-02", "b", "192.168.0.2");
    lab.until_reach("a", "192.168.0.2", true);

    // One member down: every command works, and agents keep following changes.
    lab.lab(&["etcd", "stop", "2"]);
    for _ in 0..5 {
        // Several in a row: each may start at any member.
        assert!(lab.calicoctl("calico-01", "profile show").contains('P'));
    }
    in_profile(&lab, "calico-02", "c", "192.168.0.3");
    lab.until_reach("a", "192.168.0.3", true);
    lab.until_reach("c", "192.168.0.1", true);

    // Two down: no quorum. The agents keep the kernel as it is and say what is wrong.
    lab.lab(&["etcd", "stop", "3"]);
    for host in ["calico-01", "calico-02"] {
        until(
            &format!("{host}'s /health reports the datastore"),
            60,
            || health(&lab, host).contains("datastore unavailable"),
        );
    }
    let status = lab.calicoctl("calico-01", "status");
    assert!(status.contains("datastore unavailable"), "{status}");
    assert!(
        status.contains("IPv4 BGP status"),
        "BIRD is still shown: {status}"
    );
    let refused = lab.calicoctl_fails("calico-01", "profile add Q");
    assert!(refused.contains("etcd"), "{refused}");
    assert!(
        lab.pings("a", "192.168.0.2"),
        "the kernel keeps what was programmed"
    );
    assert!(lab.pings("c", "192.168.0.1"));

    // A member back: quorum again; the agents resync and follow new changes.
    lab.lab(&["etcd", "start", "2"]);
    for host in ["calico-01", "calico-02"] {
        until(&format!("{host}'s /health is ok again"), 60, || {
            health(&lab, host) == "ok\n"
        });
    }
    in_profile(&lab, "calico-01", "d", "192.168.0.4");
    lab.until_reach("b", "192.168.0.4", true);
    let profiles = lab.calicoctl("calico-02", "profile show");
    assert!(
        profiles.contains('P') && !profiles.contains('Q'),
        "{profiles}"
    );
    lab.lab(&["etcd", "start", "3"]);
    let members = lab.lab(&["etcd", "status"]);
    assert_eq!(members.matches("healthy").count(), 3, "{members}");
}
