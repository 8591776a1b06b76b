//! Property-based fuzzing of the two parsers of untrusted or hand-written input: the route
//! file and the path pattern matcher. Whatever the input, they return a value or an error —
//! never a panic — and errors name the file.

use std::path::Path;

use keel_gateway::{GatewayConfig, pattern::Pattern};
use proptest::prelude::*;

/// Fragments that make random YAML look like route files often enough to reach deep code.
fn yaml_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("gateway:\n".to_owned()),
        Just("spring:\n  cloud:\n    gateway:\n".to_owned()),
        Just("  routes:\n".to_owned()),
        Just("    - id: r\n".to_owned()),
        Just("      uri: http://127.0.0.1:1\n".to_owned()),
        Just("      uri: lb://svc\n".to_owned()),
        Just("      predicates: [Path=/a/{x}/**]\n".to_owned()),
        Just("      filters: [StripPrefix=1, 'RewritePath=/(?<s>.*), /$\\{s}']\n".to_owned()),
        Just("      filters: [{name: Retry, args: {retries: x}}]\n".to_owned()),
        Just("      metadata: {response-timeout: -1}\n".to_owned()),
        Just("---\n".to_owned()),
        Just("spring.profiles: dev\n".to_owned()),
        Just("server:\n  port: 70000\n".to_owned()),
        "[ -~\n]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn route_files_never_panic(parts in proptest::collection::vec(yaml_fragment(), 0..12)) {
        let text: String = parts.concat();
        match GatewayConfig::parse(&text, Some(Path::new("fuzz.yaml")), &["dev".to_owned()]) {
            Ok(c) => {
                // A loaded file must also compile or fail with a named error.
                if let Err(e) = keel_gateway::check(&c) {
                    prop_assert!(e.to_string().contains("fuzz.yaml"), "{e}");
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("fuzz.yaml"), "{e}"),
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = GatewayConfig::parse(&text, Some(Path::new("fuzz.yaml")), &[]);
    }

    #[test]
    fn path_patterns_never_panic(pattern in "[/a-z{}*?.\\[\\]:\\\\+]{0,24}", input in "[/a-z.%]{0,32}") {
        if let Ok(p) = Pattern::path(&pattern, true) {
            let m = p.is_match(&input);
            // Capturing agrees with matching.
            prop_assert_eq!(m, p.captures(&input).is_some());
        }
        if let Ok(p) = Pattern::host(&pattern) {
            let _ = p.captures(&input);
        }
    }

    #[test]
    fn literal_patterns_match_themselves(segs in proptest::collection::vec("[a-z0-9]{1,8}", 1..6)) {
        let path = format!("/{}", segs.join("/"));
        let p = Pattern::path(&path, true).unwrap();
        prop_assert!(p.is_match(&path));
        let with_slash = format!("{path}/");
        prop_assert!(p.is_match(&with_slash));
        let wild = Pattern::path(&format!("/{}/**", segs[0]), true).unwrap();
        prop_assert!(wild.is_match(&path));
    }
}
