//! Felix's calculation: from the datastore's keys and values to the desired dataplane state of
//! one host. Pure (no I/O, no clock): the agent feeds it the initial listing and every watch
//! event; each event updates only what depends on it, and the graph keeps the [`DesiredState`]
//! current and the [`Changes`] since the dataplane last took them.
//!
//! Fail closed: a value that does not parse is treated as absent and reported in
//! [`DesiredState::skipped`]; an endpoint whose policy cannot be known for certain (it names a
//! profile whose rules or tags are invalid) gets no policy at all, which the dataplane renders
//! as "drop everything" for that endpoint.

mod calc;
mod desired;

pub use calc::{CalcGraph, Update};
pub use desired::{
    Changes, Config, DesiredState, EndpointPolicy, HostAction, LocalEndpoint, NetSet, TagChange,
};
