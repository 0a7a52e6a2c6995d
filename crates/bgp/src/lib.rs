//! BGP for Calico hosts: what the datastore says about BGP ([`BgpView`], fed from the
//! `/calico/bgp/v1/` keys) and the BIRD 2 configuration one host runs ([`render`]). Pure: the
//! agent feeds it keys and writes the text it returns.

mod render;
mod view;

pub use render::{render, ROUTE_PROTOCOL};
pub use view::BgpView;
