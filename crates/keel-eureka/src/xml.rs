//! Eureka's XML representation, the default for clients that do not ask for JSON
//! (py-eureka-client, for one, parses only XML).

use std::fmt::Write;

use crate::model::{Application, Applications, Instance, Port};

/// Escapes text for an XML element or attribute.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether `name` can be used as an element name (metadata keys become elements).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn elem(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<{name}>{}</{name}>", esc(value));
}

fn port(out: &mut String, name: &str, p: &Port) {
    let _ = write!(out, "<{name} enabled=\"{}\">{}</{name}>", p.enabled, p.port);
}

/// Writes one `<instance>` element.
pub fn instance(out: &mut String, i: &Instance) {
    out.push_str("<instance>");
    elem(out, "instanceId", &i.instance_id);
    elem(out, "hostName", &i.host_name);
    elem(out, "app", &i.app);
    elem(out, "ipAddr", &i.ip_addr);
    elem(out, "status", i.status.as_str());
    elem(out, "overriddenstatus", i.overridden_status.as_str());
    if let Some(p) = &i.port {
        port(out, "port", p);
    }
    if let Some(p) = &i.secure_port {
        port(out, "securePort", p);
    }
    elem(out, "countryId", &i.country_id.to_string());
    if let Some(dc) = &i.data_center_info {
        let _ = write!(out, "<dataCenterInfo class=\"{}\">", esc(&dc.class));
        elem(out, "name", &dc.name);
        if let Some(md) = &dc.metadata {
            out.push_str("<metadata>");
            for (k, v) in md.iter().filter(|(k, _)| valid_name(k)) {
                elem(out, k, v);
            }
            out.push_str("</metadata>");
        }
        out.push_str("</dataCenterInfo>");
    }
    let l = &i.lease_info;
    out.push_str("<leaseInfo>");
    elem(
        out,
        "renewalIntervalInSecs",
        &l.renewal_interval_in_secs.to_string(),
    );
    elem(out, "durationInSecs", &l.duration_in_secs.to_string());
    elem(
        out,
        "registrationTimestamp",
        &l.registration_timestamp.to_string(),
    );
    elem(
        out,
        "lastRenewalTimestamp",
        &l.last_renewal_timestamp.to_string(),
    );
    elem(out, "evictionTimestamp", &l.eviction_timestamp.to_string());
    elem(
        out,
        "serviceUpTimestamp",
        &l.service_up_timestamp.to_string(),
    );
    out.push_str("</leaseInfo>");
    if i.metadata.is_empty() {
        out.push_str("<metadata class=\"java.util.Collections$EmptyMap\"/>");
    } else {
        out.push_str("<metadata>");
        for (k, v) in i.metadata.iter().filter(|(k, _)| valid_name(k)) {
            elem(out, k, v);
        }
        out.push_str("</metadata>");
    }
    for (name, v) in [
        ("homePageUrl", &i.home_page_url),
        ("statusPageUrl", &i.status_page_url),
        ("healthCheckUrl", &i.health_check_url),
        ("secureHealthCheckUrl", &i.secure_health_check_url),
        ("vipAddress", &i.vip_address),
        ("secureVipAddress", &i.secure_vip_address),
    ] {
        if let Some(v) = v {
            elem(out, name, v);
        }
    }
    elem(
        out,
        "isCoordinatingDiscoveryServer",
        if i.is_coordinating_discovery_server {
            "true"
        } else {
            "false"
        },
    );
    elem(
        out,
        "lastUpdatedTimestamp",
        &i.last_updated_timestamp.to_string(),
    );
    elem(
        out,
        "lastDirtyTimestamp",
        &i.last_dirty_timestamp.to_string(),
    );
    if let Some(a) = i.action_type {
        elem(out, "actionType", a.as_str());
    }
    out.push_str("</instance>");
}

/// Writes one `<application>` element.
pub fn application(out: &mut String, a: &Application) {
    out.push_str("<application>");
    elem(out, "name", &a.name);
    for i in &a.instance {
        instance(out, i);
    }
    out.push_str("</application>");
}

/// The `<applications>` document.
pub fn applications(a: &Applications) -> String {
    let mut out = String::with_capacity(256 + a.application.len() * 1024);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    out.push_str("<applications>");
    elem(&mut out, "versions__delta", &a.versions_delta);
    elem(&mut out, "apps__hashcode", &a.apps_hashcode);
    for app in &a.application {
        application(&mut out, app);
    }
    out.push_str("</applications>");
    out
}

/// A standalone `<application>` document.
pub fn application_doc(a: &Application) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    application(&mut out, a);
    out
}

/// A standalone `<instance>` document.
pub fn instance_doc(i: &Instance) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    instance(&mut out, i);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_skips_invalid_metadata_names() {
        let mut i = Instance::new("a", "a<1>", "10.0.0.1", 80);
        i.metadata.insert("zone".into(), "eu & us".into());
        i.metadata.insert("1bad".into(), "x".into());
        let s = instance_doc(&i);
        assert!(s.contains("<instanceId>a&lt;1&gt;</instanceId>"), "{s}");
        assert!(s.contains("<zone>eu &amp; us</zone>"), "{s}");
        assert!(!s.contains("1bad"), "{s}");
        assert!(s.contains("<port enabled=\"true\">80</port>"), "{s}");
    }
}
