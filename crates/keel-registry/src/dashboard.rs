//! The dashboard at `/`: applications, instances, status, lease age, metadata, peers and
//! self-preservation — plain server-rendered HTML, readable without JavaScript.

use std::fmt::Write;

use axum::{extract::State, response::Html};

use keel_eureka::Status;

use crate::api::AppState;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn age(now: u64, then: u64) -> String {
    if then == 0 {
        return "never".to_owned();
    }
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m {}s ago", s / 60, s % 60),
        _ => format!("{}h {}m ago", s / 3600, (s % 3600) / 60),
    }
}

/// Renders the dashboard.
pub(crate) async fn page(State(s): State<AppState>) -> Html<String> {
    let now = s.registry.now_ms();
    let stats = s.registry.stats();
    let apps = s.registry.applications();
    let config = s.registry.config();
    let mut h = String::with_capacity(8192);
    h.push_str(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Keel registry</title>\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
         th{background:#f3f3f3}.UP{color:#070}.DOWN{color:#b00}.OUT_OF_SERVICE,.STARTING,.UNKNOWN{color:#a60}\
         .warn{background:#fff3cd;padding:.6em;border:1px solid #e0c36c}</style></head><body>",
    );
    h.push_str("<h1>Keel registry</h1>");
    if stats.self_preservation_active {
        h.push_str(
            "<p class=\"warn\"><b>Self-preservation is ON.</b> Renewals fell below the \
             threshold; expired leases are not being evicted. Instances listed here may be gone.</p>",
        );
    }
    let _ = write!(
        h,
        "<h2>General</h2><table>\
         <tr><th>Uptime</th><td>{}</td></tr>\
         <tr><th>Applications</th><td>{}</td></tr>\
         <tr><th>Instances</th><td>{}</td></tr>\
         <tr><th>Index</th><td>{}</td></tr>\
         <tr><th>Renewals (last minute)</th><td>{}</td></tr>\
         <tr><th>Expected renewals per minute</th><td>{}</td></tr>\
         <tr><th>Self-preservation</th><td>{} (threshold {:.0}%) — {}</td></tr>\
         <tr><th>Watchers</th><td>{}</td></tr></table>",
        age(now, s.started_ms).trim_end_matches(" ago"),
        stats.applications,
        stats.instances,
        stats.index,
        stats.renews_last_minute,
        stats.expected_renews_per_minute,
        if stats.self_preservation_enabled {
            "enabled"
        } else {
            "disabled"
        },
        config.renewal_percent_threshold * 100.0,
        if stats.self_preservation_active {
            "<b>engaged</b>"
        } else {
            "not engaged"
        },
        s.registry.watchers(),
    );

    h.push_str("<h2>Instances</h2>");
    if apps.application.is_empty() {
        h.push_str("<p>No instances are registered.</p>");
    } else {
        h.push_str(
            "<table><tr><th>Application</th><th>Instance</th><th>Address</th><th>Status</th>\
             <th>Last renewal</th><th>Lease</th><th>Registered</th><th>Metadata</th></tr>",
        );
        for app in &apps.application {
            for i in &app.instance {
                let port = i.port.as_ref().map(|p| p.port).unwrap_or(0);
                let status = i.status;
                let override_note = if i.overridden_status != Status::Unknown {
                    " (override)"
                } else {
                    ""
                };
                let md: Vec<String> = i
                    .metadata
                    .iter()
                    .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
                    .collect();
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}:{}</td><td class=\"{}\">{}{}</td>\
                     <td>{}</td><td>{}s / renew every {}s</td><td>{}</td><td>{}</td></tr>",
                    esc(&app.name),
                    esc(&i.instance_id),
                    esc(&i.ip_addr),
                    port,
                    status,
                    status,
                    override_note,
                    age(now, i.lease_info.last_renewal_timestamp),
                    i.lease_info.duration_in_secs,
                    i.lease_info.renewal_interval_in_secs,
                    age(now, i.lease_info.registration_timestamp),
                    md.join("<br>"),
                );
            }
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Peers</h2>");
    let peers = s.peers.status();
    if peers.is_empty() {
        h.push_str("<p>No peers: this registry runs alone.</p>");
    } else {
        h.push_str("<table><tr><th>Peer</th><th>Last replication</th><th>Failures</th><th>Last error</th></tr>");
        for p in peers {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.url),
                age(now, p.last_success_ms),
                p.failures,
                esc(p.last_error.as_deref().unwrap_or("")),
            );
        }
        h.push_str("</table>");
    }
    h.push_str(
        "<p>APIs: <a href=\"/eureka/apps\">/eureka/apps</a> (XML; JSON with \
         <code>Accept: application/json</code>), <code>/keel/v1/watch</code> (server-sent \
         events), <a href=\"/keel/v1/stats\">/keel/v1/stats</a>.</p></body></html>",
    );
    Html(h)
}
