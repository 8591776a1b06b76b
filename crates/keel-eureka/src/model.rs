//! Eureka's wire types (JSON shape), with the lenient parsing real clients need: numbers
//! may arrive as strings, booleans as `"true"`, ports as `{"$": 8080, "@enabled": "true"}`.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use serde_json::{Map, Value};

/// An instance's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Ready to receive traffic.
    Up,
    /// Failed its health check.
    Down,
    /// Starting up.
    Starting,
    /// Deliberately taken out of traffic.
    OutOfService,
    /// Unknown.
    Unknown,
}

impl Status {
    /// The wire name (`UP`, `OUT_OF_SERVICE`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "UP",
            Status::Down => "DOWN",
            Status::Starting => "STARTING",
            Status::OutOfService => "OUT_OF_SERVICE",
            Status::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "UP" => Ok(Status::Up),
            "DOWN" => Ok(Status::Down),
            "STARTING" => Ok(Status::Starting),
            "OUT_OF_SERVICE" => Ok(Status::OutOfService),
            "UNKNOWN" => Ok(Status::Unknown),
            other => Err(format!(
                "unknown status {other:?} (expected UP, DOWN, STARTING, OUT_OF_SERVICE or UNKNOWN)"
            )),
        }
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// `{"$": 8080, "@enabled": "true"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// The port number.
    #[serde(rename = "$", deserialize_with = "lenient_u16")]
    pub port: u16,
    /// Whether the port is enabled.
    #[serde(
        rename = "@enabled",
        serialize_with = "bool_as_string",
        deserialize_with = "lenient_bool",
        default = "yes"
    )]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Where the instance runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataCenterInfo {
    /// Java class name the Eureka client expects back.
    #[serde(rename = "@class", default = "default_dc_class")]
    pub class: String,
    /// `MyOwn`, `Amazon`, …
    pub name: String,
    /// Extra data-center metadata (e.g. AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

fn default_dc_class() -> String {
    "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo".to_owned()
}

impl Default for DataCenterInfo {
    fn default() -> Self {
        Self {
            class: default_dc_class(),
            name: "MyOwn".to_owned(),
            metadata: None,
        }
    }
}

/// Lease settings and timestamps (epoch milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseInfo {
    /// How often the client renews, in seconds (Eureka: 30).
    #[serde(default = "thirty", deserialize_with = "lenient_u64")]
    pub renewal_interval_in_secs: u64,
    /// How long the lease lasts without renewal, in seconds (Eureka: 90).
    #[serde(default = "ninety", deserialize_with = "lenient_u64")]
    pub duration_in_secs: u64,
    /// When the instance registered.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub registration_timestamp: u64,
    /// When the lease was last renewed.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub last_renewal_timestamp: u64,
    /// When the instance was evicted (0: not evicted).
    #[serde(default, deserialize_with = "lenient_u64")]
    pub eviction_timestamp: u64,
    /// When the instance first reported UP.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub service_up_timestamp: u64,
}

fn thirty() -> u64 {
    30
}
fn ninety() -> u64 {
    90
}

impl Default for LeaseInfo {
    fn default() -> Self {
        Self {
            renewal_interval_in_secs: 30,
            duration_in_secs: 90,
            registration_timestamp: 0,
            last_renewal_timestamp: 0,
            eviction_timestamp: 0,
            service_up_timestamp: 0,
        }
    }
}

/// What happened to an instance, in deltas and watch events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ActionType {
    /// Registered.
    Added,
    /// Status, metadata or other data changed.
    Modified,
    /// Cancelled or evicted.
    Deleted,
}

impl ActionType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::Added => "ADDED",
            ActionType::Modified => "MODIFIED",
            ActionType::Deleted => "DELETED",
        }
    }
}

/// An instance as Eureka clients send and receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Unique id of the instance (within the registry).
    #[serde(default)]
    pub instance_id: String,
    /// Host name.
    #[serde(default)]
    pub host_name: String,
    /// Application name (upper-cased by the registry).
    #[serde(default)]
    pub app: String,
    /// IP address.
    #[serde(default)]
    pub ip_addr: String,
    /// Status.
    #[serde(default = "unknown_status")]
    pub status: Status,
    /// Status set by an operator, overriding what the instance reports.
    #[serde(default = "unknown_status", rename = "overriddenstatus")]
    pub overridden_status: Status,
    /// Plain port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// TLS port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_port: Option<Port>,
    /// Country id (always 1 in practice).
    #[serde(default = "one", deserialize_with = "lenient_u64")]
    pub country_id: u64,
    /// Data center.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_center_info: Option<DataCenterInfo>,
    /// Lease.
    #[serde(default)]
    pub lease_info: LeaseInfo,
    /// Free-form metadata (version, zone, …).
    #[serde(
        default,
        deserialize_with = "lenient_metadata",
        serialize_with = "metadata_out"
    )]
    pub metadata: BTreeMap<String, String>,
    /// Home page URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_page_url: Option<String>,
    /// Status page URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_page_url: Option<String>,
    /// Health check URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_url: Option<String>,
    /// TLS health check URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_health_check_url: Option<String>,
    /// Virtual address clients look the instance up by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_address: Option<String>,
    /// Secure virtual address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_vip_address: Option<String>,
    /// Whether this is a discovery server.
    #[serde(
        default,
        serialize_with = "bool_as_string",
        deserialize_with = "lenient_bool"
    )]
    pub is_coordinating_discovery_server: bool,
    /// When the registry last changed this record.
    #[serde(
        default,
        serialize_with = "u64_as_string",
        deserialize_with = "lenient_u64"
    )]
    pub last_updated_timestamp: u64,
    /// When the instance last changed its own data (conflict resolution).
    #[serde(
        default,
        serialize_with = "u64_as_string",
        deserialize_with = "lenient_u64"
    )]
    pub last_dirty_timestamp: u64,
    /// What last happened to the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_type: Option<ActionType>,
    /// Fields this registry does not interpret, kept and returned unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn unknown_status() -> Status {
    Status::Unknown
}
fn one() -> u64 {
    1
}

impl Instance {
    /// A minimal instance (for tests and Keel's own client).
    pub fn new(app: &str, instance_id: &str, ip: &str, port: u16) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            host_name: ip.to_owned(),
            app: app.to_ascii_uppercase(),
            ip_addr: ip.to_owned(),
            status: Status::Up,
            overridden_status: Status::Unknown,
            port: Some(Port {
                port,
                enabled: true,
            }),
            secure_port: Some(Port {
                port: 443,
                enabled: false,
            }),
            country_id: 1,
            data_center_info: Some(DataCenterInfo::default()),
            lease_info: LeaseInfo::default(),
            metadata: BTreeMap::new(),
            home_page_url: None,
            status_page_url: None,
            health_check_url: None,
            secure_health_check_url: None,
            vip_address: Some(app.to_ascii_lowercase()),
            secure_vip_address: Some(app.to_ascii_lowercase()),
            is_coordinating_discovery_server: false,
            last_updated_timestamp: 0,
            last_dirty_timestamp: 0,
            action_type: None,
            extra: Map::new(),
        }
    }

    /// The status clients should see: an operator override wins.
    pub fn effective_status(&self) -> Status {
        if self.overridden_status != Status::Unknown {
            self.overridden_status
        } else {
            self.status
        }
    }

    /// Checks the fields a registration must carry; the error names the first one missing.
    pub fn validate(&self) -> Result<(), String> {
        if self.instance_id.trim().is_empty() {
            return Err("Missing instanceId".to_owned());
        }
        if self.host_name.trim().is_empty() {
            return Err("Missing hostname".to_owned());
        }
        if self.ip_addr.trim().is_empty() {
            return Err("Missing ip address".to_owned());
        }
        if self.app.trim().is_empty() {
            return Err("Missing appName".to_owned());
        }
        if self.data_center_info.is_none() {
            return Err("Missing dataCenterInfo".to_owned());
        }
        if self.lease_info.duration_in_secs == 0 {
            return Err("leaseInfo.durationInSecs must be greater than 0".to_owned());
        }
        Ok(())
    }
}

/// `{"instance": {...}}`, the registration body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceEnvelope {
    /// The instance.
    pub instance: Instance,
}

/// One application and its instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Application {
    /// Application name.
    pub name: String,
    /// Its instances.
    #[serde(default, deserialize_with = "one_or_many")]
    pub instance: Vec<Instance>,
}

/// `{"application": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplicationEnvelope {
    /// The application.
    pub application: Application,
}

/// The applications document of a full fetch or a delta.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applications {
    /// Registry version.
    #[serde(rename = "versions__delta", deserialize_with = "lenient_string")]
    pub versions_delta: String,
    /// Reconciliation hash: status counts such as `DOWN_1_UP_3_`.
    #[serde(rename = "apps__hashcode", default)]
    pub apps_hashcode: String,
    /// The applications.
    #[serde(default, deserialize_with = "one_or_many")]
    pub application: Vec<Application>,
}

/// `{"applications": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplicationsEnvelope {
    /// The applications.
    pub applications: Applications,
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| de::Error::custom(format!("expected a non-negative number, got {n}"))),
        Value::String(s) if s.trim().is_empty() => Ok(0),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| de::Error::custom(format!("expected a number, got {s:?}"))),
        Value::Null => Ok(0),
        other => Err(de::Error::custom(format!("expected a number, got {other}"))),
    }
}

fn lenient_u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = lenient_u64(d)?;
    u16::try_from(v).map_err(|_| de::Error::custom(format!("port {v} is out of range")))
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::String(s) => match s.trim() {
            "true" | "TRUE" | "True" => Ok(true),
            "false" | "FALSE" | "False" | "" => Ok(false),
            other => Err(de::Error::custom(format!(
                "expected true or false, got {other:?}"
            ))),
        },
        Value::Null => Ok(false),
        other => Err(de::Error::custom(format!(
            "expected a boolean, got {other}"
        ))),
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok(String::new()),
        other => Err(de::Error::custom(format!("expected a string, got {other}"))),
    }
}

fn lenient_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Object(m) => Ok(m
            .into_iter()
            .filter(|(k, _)| k != "@class")
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect()),
        Value::Null => Ok(BTreeMap::new()),
        other => Err(de::Error::custom(format!(
            "metadata must be an object, got {other}"
        ))),
    }
}

fn metadata_out<S: Serializer>(m: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    if m.is_empty() {
        let mut empty = BTreeMap::new();
        empty.insert("@class", "java.util.Collections$EmptyMap");
        empty.serialize(s)
    } else {
        m.serialize(s)
    }
}

fn bool_as_string<S: Serializer>(b: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *b { "true" } else { "false" })
}

fn u64_as_string<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    match Value::deserialize(d)? {
        Value::Array(a) => a
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(de::Error::custom))
            .collect(),
        Value::Null => Ok(Vec::new()),
        v => Ok(vec![serde_json::from_value(v).map_err(de::Error::custom)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_py_eureka_client_sends() {
        let body = r#"{"instance": {"instanceId": "h:app:9090", "hostName": "h", "app": "MY-APP",
            "ipAddr": "10.0.0.7", "status": "UP", "overriddenstatus": "UNKNOWN",
            "port": {"$": 9090, "@enabled": "true"}, "securePort": {"$": 443, "@enabled": "false"},
            "countryId": 1, "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
            "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90, "registrationTimestamp": 0,
                "lastRenewalTimestamp": 0, "evictionTimestamp": 0, "serviceUpTimestamp": 0},
            "metadata": {"management.port": "9090"}, "homePageUrl": "http://h:9090/",
            "vipAddress": "my-app", "secureVipAddress": "my-app",
            "lastUpdatedTimestamp": "1700000000000", "lastDirtyTimestamp": "1700000000001",
            "isCoordinatingDiscoveryServer": "false", "sid": "na"}}"#;
        let env: InstanceEnvelope = serde_json::from_str(body).unwrap();
        let i = env.instance;
        assert_eq!(i.port.as_ref().unwrap().port, 9090);
        assert!(!i.secure_port.as_ref().unwrap().enabled);
        assert_eq!(i.last_dirty_timestamp, 1_700_000_000_001);
        assert_eq!(i.metadata["management.port"], "9090");
        assert_eq!(i.extra["sid"], "na");
        assert!(i.validate().is_ok());
        // Round trip keeps the Eureka shape.
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(v["port"]["$"], 9090);
        assert_eq!(v["port"]["@enabled"], "true");
        assert_eq!(v["lastDirtyTimestamp"], "1700000000001");
        assert_eq!(v["sid"], "na");
    }

    #[test]
    fn validation_names_the_missing_field() {
        let mut i = Instance::new("a", "a-1", "10.0.0.1", 80);
        i.host_name.clear();
        assert_eq!(i.validate().unwrap_err(), "Missing hostname");
        let mut i = Instance::new("a", "a-1", "10.0.0.1", 80);
        i.data_center_info = None;
        assert_eq!(i.validate().unwrap_err(), "Missing dataCenterInfo");
    }

    #[test]
    fn single_application_object_is_accepted_as_a_list() {
        let v = r#"{"applications":{"versions__delta":1,"apps__hashcode":"UP_1_",
            "application":{"name":"A","instance":{"instanceId":"x","hostName":"h","app":"A","ipAddr":"1.1.1.1","status":"UP"}}}}"#;
        let a: ApplicationsEnvelope = serde_json::from_str(v).unwrap();
        assert_eq!(a.applications.application[0].instance.len(), 1);
        assert_eq!(a.applications.versions_delta, "1");
    }

    #[test]
    fn bad_status_is_an_error() {
        assert!("SLEEPING".parse::<Status>().is_err());
        assert_eq!(
            "out_of_service".parse::<Status>().unwrap(),
            Status::OutOfService
        );
    }
}
