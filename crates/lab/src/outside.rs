//! The outside world, for nat-outgoing tests: a namespace on the fabric at 172.17.8.200 (and
//! fd00:8::c8) that knows no route to any pool, so only masqueraded traffic gets an answer.

use anyhow::{bail, Result};

use crate::lab::Lab;

pub const OUTSIDE_IP: &str = "172.17.8.200";
pub const OUTSIDE_IP6: &str = "fd00:8::c8";

impl Lab {
    pub fn outside_netns(&self) -> String {
        format!("{}-outside", self.name)
    }

    pub fn up_outside(&self) -> Result<()> {
        if !self.netns_exists(&self.fabric()) {
            bail!(
                "lab {} is not up; start it with 'calico-lab up --name {}'",
                self.name,
                self.name
            );
        }
        let netns = self.outside_netns();
        if !self.netns_exists(&netns) {
            self.plug_into_fabric(&netns, "outside", OUTSIDE_IP, OUTSIDE_IP6)?;
        }
        println!("outside  {netns} {OUTSIDE_IP} {OUTSIDE_IP6}: no route to any pool");
        Ok(())
    }
}
