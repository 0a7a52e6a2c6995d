//! The libnetwork remote driver and remote IPAM protocols (Docker 20.10): the JSON Docker sends
//! to `POST /<Interface>.<Method>` and what it expects back. Docker marshals every field (nil
//! maps and slices as `null`, unset strings as `""`) and reads answers case-insensitively,
//! ignoring fields it does not know; an answer must never be an empty body.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Option keys Docker puts in requests.
pub mod options {
    /// CreateNetwork: the `-o` driver options (a string map, possibly empty).
    pub const GENERIC: &str = "com.docker.network.generic";
    pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
    pub const INTERNAL: &str = "com.docker.network.internal";
    /// RequestAddress: what the address is for.
    pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
    pub const GATEWAY: &str = "com.docker.network.gateway";
}

pub type JsonMap = HashMap<String, serde_json::Value>;

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Activated {
    pub implements: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Capabilities {
    pub scope: &'static str,
    pub connectivity_scope: &'static str,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamData {
    pub address_space: String,
    pub pool: Option<String>,
    pub gateway: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    pub options: Option<JsonMap>,
    #[serde(rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NetworkOnly {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointInterface {
    pub address: String,
    #[serde(rename = "AddressIPv6")]
    pub address_ipv6: String,
    pub mac_address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub interface: Option<EndpointInterface>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreatedInterface {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointCreated {
    pub interface: CreatedInterface,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EndpointOnly {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct OperInfo {
    pub value: JsonMap,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Join {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    /// The interface on the host that Docker moves into the container…
    pub src_name: String,
    /// …and names with this prefix and an index (`eth0`).
    pub dst_prefix: &'static str,
}

/// A route Docker adds in the container. RouteType 1: directly connected (scope link).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StaticRoute {
    pub destination: String,
    pub route_type: u8,
    pub next_hop: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Joined {
    pub interface_name: InterfaceName,
    pub gateway: String,
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    pub static_routes: Vec<StaticRoute>,
    pub disable_gateway_service: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    pub requires_request_replay: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressSpaces {
    pub local_default_address_space: &'static str,
    pub global_default_address_space: &'static str,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestPool {
    pub address_space: String,
    pub pool: String,
    pub sub_pool: String,
    pub options: Option<HashMap<String, String>>,
    #[serde(rename = "V6")]
    pub v6: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PoolGranted {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub pool: String,
    pub data: HashMap<&'static str, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PoolOnly {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: String,
    pub options: Option<HashMap<String, String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressGranted {
    /// A CIDR: `192.168.0.5/32`.
    pub address: String,
    pub data: HashMap<&'static str, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: String,
}

/// An empty request or success: `{}` (fields Docker sends that we need not read are ignored).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Empty {}

/// A failure as Docker reads it from a non-200 answer: it prints `<Method>: <Err>`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Failure {
    pub err: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_requests_parse_with_nulls_and_unknown_fields() {
        let create: CreateNetwork = serde_json::from_str(
            r#"{"NetworkID":"n1","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{}},"IPv4Data":[{"AddressSpace":"CalicoLocalAddressSpace","Pool":"0.0.0.0/0","Gateway":"0.0.0.0/0","AuxAddresses":null}],"IPv6Data":null}"#,
        )
        .unwrap();
        assert_eq!(create.network_id, "n1");
        assert_eq!(
            create.ipv4_data.unwrap()[0].pool.as_deref(),
            Some("0.0.0.0/0")
        );
        let endpoint: CreateEndpoint = serde_json::from_str(
            r#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"192.168.0.5/32","AddressIPv6":"","MacAddress":""},"Options":{"com.docker.network.endpoint.exposedports":null}}"#,
        )
        .unwrap();
        assert_eq!(endpoint.interface.unwrap().address, "192.168.0.5/32");
        let pool: RequestPool = serde_json::from_str(
            r#"{"AddressSpace":"CalicoLocalAddressSpace","Pool":"","SubPool":"","Options":null,"V6":false}"#,
        )
        .unwrap();
        assert!(pool.pool.is_empty() && !pool.v6);
    }

    #[test]
    fn answers_use_dockers_field_names() {
        let joined = Joined {
            interface_name: InterfaceName {
                src_name: "tmp0123456789a".into(),
                dst_prefix: "eth",
            },
            gateway: "169.254.1.1".into(),
            gateway_ipv6: String::new(),
            static_routes: vec![StaticRoute {
                destination: "169.254.1.1/32".into(),
                route_type: 1,
                next_hop: String::new(),
            }],
            disable_gateway_service: true,
        };
        assert_eq!(
            serde_json::to_string(&joined).unwrap(),
            r#"{"InterfaceName":{"SrcName":"tmp0123456789a","DstPrefix":"eth"},"Gateway":"169.254.1.1","StaticRoutes":[{"Destination":"169.254.1.1/32","RouteType":1,"NextHop":""}],"DisableGatewayService":true}"#
        );
        let granted = PoolGranted {
            pool_id: "CalicoPoolIPv4".into(),
            pool: "0.0.0.0/0".into(),
            data: HashMap::from([(options::GATEWAY, "0.0.0.0/0".into())]),
        };
        assert_eq!(
            serde_json::to_string(&granted).unwrap(),
            r#"{"PoolID":"CalicoPoolIPv4","Pool":"0.0.0.0/0","Data":{"com.docker.network.gateway":"0.0.0.0/0"}}"#
        );
    }
}
