//! Property tests (fuzzing on stable Rust, with proptest) of everything that
//! reads input: the policy loader, the Mixpanel API decoders, stored
//! payloads, durations, cron lines and server text. None may panic; policy
//! errors name their key. CI runs the default number of cases per property
//! (256); to search longer, run for example
//! `PROPTEST_CASES=100000 cargo test --lib tests::`.

use proptest::prelude::*;
use reqwest::StatusCode;

use crate::mixpanel::client::decode;
use crate::mixpanel::lenient::List;
use crate::mixpanel::types::{CreatedServiceAccount, Me, ProjectMember, ServiceAccount};
use crate::policy::Policy;
use crate::sink::Payload;
use crate::values::{HumanDuration, Schedule};

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})?"
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_string()),
                    Just("username".to_string()),
                    Just("status".to_string()),
                    Just("results".to_string()),
                    Just("error".to_string()),
                    Just("token".to_string()),
                    Just("expires".to_string()),
                    Just("last_used".to_string()),
                    Just("role".to_string()),
                    Just("organizations".to_string()),
                    Just("projects".to_string()),
                    "[a-z_]{1,10}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A TOML value of any kind, as text.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[0-9]{1,12}[smhd]".prop_map(|s| format!("\"{s}\"")),
        ".{0,30}".prop_map(|s| format!("{s:?}")),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("{ env = \"X\" }".to_string()),
        Just("[{ id = 1, role = \"admin\" }]".to_string()),
        "[0-9*,/ -]{0,20}".prop_map(|s| format!("\"{s}\"")),
    ]
}

const KEYS: &[&str] = &[
    "ttl",
    "renew_before",
    "grace",
    "orphan_after",
    "jitter",
    "schedule",
    "delete_when_idle",
    "max_grace",
    "on_rotate_timeout",
    "role",
    "projects",
    "adopt",
    "path",
    "name",
    "webhook",
    "on_rotate",
    "unknown_key",
];

proptest! {
    #[test]
    fn the_policy_loader_never_panics_on_any_text(text in ".{0,400}") {
        let _ = Policy::parse(&text);
    }

    #[test]
    fn a_bad_value_anywhere_is_an_error_naming_its_key(
        key in prop::sample::select(KEYS),
        value in toml_value(),
        in_defaults in any::<bool>(),
    ) {
        let (defaults, own) = if in_defaults && !["path", "name", "adopt", "on_rotate"].contains(&key) {
            (format!("{key} = {value}\n"), String::new())
        } else {
            (String::new(), format!("{key} = {value}\n"))
        };
        let text = format!(
            "version = 1\n[mixpanel]\nregion = \"us\"\norganization_id = 1\nusername = \"u\"\nsecret = {{ env = \"X\" }}\n\
             [defaults]\n{defaults}[sinks.f]\ntype = \"file\"\ndir = \"/tmp\"\n\
             [[integrations]]\nname = \"etl\"\nsink = \"f\"\npath = \"etl.json\"\nadopt = 5\n{own}"
        );
        // A duplicated key is a TOML error: fine too, it names the file.
        if let Err(e) = Policy::parse(&text) {
            let msg = e.to_string();
            prop_assert!(msg.contains('`'), "no key named: {msg}");
        }
    }

    #[test]
    fn api_decoders_never_panic(value in json(), status in prop::sample::select(vec![200u16, 201, 301, 400, 401, 403, 404, 429, 500])) {
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let _ = decode::<Vec<ServiceAccount>>("list", status, None, &bytes);
        let _ = decode::<ServiceAccount>("get", status, None, &bytes);
        let _ = decode::<CreatedServiceAccount>("create", status, None, &bytes);
        let _ = decode::<Vec<ProjectMember>>("members", status, None, &bytes);
        let _ = decode::<Me>("me", status, None, &bytes);
    }

    /// Rows with their required fields, any extra fields, and `null` or any
    /// value in every optional one: the list keeps every row.
    #[test]
    fn extra_fields_and_nulls_never_fail_a_list(
        rows in prop::collection::vec(
            (
                1u64..1_000_000,
                any::<bool>(),
                prop::collection::btree_map("[a-z_]{1,12}", json(), 0..6),
                prop::collection::vec(
                    (prop::sample::select(vec!["last_used", "expires", "created", "creator", "user", "role", "creator_email", "creator_name"]), json()),
                    0..8,
                ),
            ),
            0..12,
        )
    ) {
        let mut want = vec![];
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(id, id_as_string, extra, optional)| {
                let mut o: serde_json::Map<String, serde_json::Value> = extra.clone().into_iter().collect();
                for (k, v) in optional {
                    o.insert((*k).to_string(), v.clone());
                }
                o.insert("id".into(), if *id_as_string { id.to_string().into() } else { (*id).into() });
                o.insert("username".into(), format!("bot-{id}.abc123.mp-service-account").into());
                want.push(*id);
                serde_json::Value::Object(o)
            })
            .collect();
        let body = serde_json::json!({"status": "ok", "results": list});
        let got = decode::<List<ServiceAccount>>("list", StatusCode::OK, None, body.to_string().as_bytes()).unwrap();
        prop_assert_eq!(got.0.iter().map(|a| a.id).collect::<Vec<_>>(), want);
    }

    #[test]
    fn api_decoders_never_panic_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode::<Vec<ServiceAccount>>("list", StatusCode::OK, None, &bytes);
        let _ = decode::<Me>("me", StatusCode::BAD_REQUEST, None, &bytes);
    }

    #[test]
    fn stored_payloads_never_panic(value in json()) {
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        if let Err(e) = Payload::from_json(&bytes) {
            prop_assert!(!e.to_string().contains("token"));
        }
    }

    #[test]
    fn durations_and_cron_lines_never_panic(s in ".{0,40}", digits in "[0-9]{1,30}[smhd]{1,3}") {
        let _ = HumanDuration::parse(&s);
        let _ = HumanDuration::parse(&digits);
        let _ = Schedule::parse(&s);
    }

    #[test]
    fn server_text_is_one_short_line(s in ".{0,600}") {
        let shown = crate::text::server_text(&s);
        prop_assert!(!shown.contains('\n'));
        prop_assert!(shown.chars().count() <= 201);
    }
}

/// Directory aliases of `dir` (relative to `base`, where `link` is a
/// symbolic link to `dir`): `/.`, `//`, a trailing slash, the link, `..`.
fn dir_alias(base: &std::path::Path, how: u8) -> String {
    let dir = base.join("creds").display().to_string();
    match how % 6 {
        0 => dir,
        1 => format!("{dir}/."),
        2 => format!("{}//creds", base.display()),
        3 => format!("{dir}/"),
        4 => base.join("link").display().to_string(),
        _ => format!("{}/nosuch/../creds", base.display()),
    }
}

/// A path of `segments` below the sink, spelled with `//` or `./` between
/// segments as `noise` says.
fn path_alias(segments: &[String], noise: &[u8]) -> String {
    let mut out = String::new();
    for (n, s) in segments.iter().enumerate() {
        if n > 0 {
            out.push_str(match noise.get(n).copied().unwrap_or(0) % 3 {
                0 => "/",
                1 => "//",
                _ => "/./",
            });
        }
        out.push_str(s);
    }
    out
}

/// A policy of two integrations, `a` at `(sink_a, path_a)` and `b` at
/// `(sink_b, path_b)`; the loader's error, if any.
fn two_places(sinks: &str, a: (&str, &str), b: (&str, &str)) -> Option<String> {
    let text = format!(
        "version = 1\n[mixpanel]\nregion = \"us\"\norganization_id = 1\nusername = \"u\"\nsecret = {{ env = \"X\" }}\n\
         {sinks}\n\
         [[integrations]]\nname = \"a\"\nsink = \"{}\"\npath = \"{}\"\nadopt = 5\n\
         [[integrations]]\nname = \"b\"\nsink = \"{}\"\npath = \"{}\"\nadopt = 6\n",
        a.0, a.1, b.0, b.1
    );
    Policy::parse(&text).err().map(|e| e.to_string())
}

proptest! {
    #[test]
    fn two_spellings_of_one_file_are_refused_at_load(
        segments in prop::collection::vec("[a-z]{1,6}", 1..4),
        noise_a in prop::collection::vec(any::<u8>(), 4),
        noise_b in prop::collection::vec(any::<u8>(), 4),
        dir_a in any::<u8>(),
        dir_b in any::<u8>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("creds")).unwrap();
        std::os::unix::fs::symlink(d.path().join("creds"), d.path().join("link")).unwrap();
        let sinks = format!(
            "[sinks.one]\ntype = \"file\"\ndir = \"{}\"\n[sinks.two]\ntype = \"file\"\ndir = \"{}\"\n",
            dir_alias(d.path(), dir_a),
            dir_alias(d.path(), dir_b)
        );
        let mut file = segments.clone();
        if let Some(last) = file.last_mut() {
            last.push_str(".json");
        }
        let err = two_places(&sinks, ("one", &path_alias(&file, &noise_a)), ("two", &path_alias(&file, &noise_b)));
        prop_assert!(err.as_deref().is_some_and(|e| e.contains("is the same place as")), "{err:?}");
        // Another file is another place.
        let other = path_alias(&[format!("{}x.json", segments[0])], &noise_b);
        prop_assert_eq!(two_places(&sinks, ("one", &path_alias(&file, &noise_a)), ("two", &other)), None);
    }

    #[test]
    fn two_spellings_of_one_vault_path_or_aws_secret_are_refused_at_load(
        segments in prop::collection::vec("[a-z]{1,6}", 1..4),
        upper in any::<bool>(),
        slash in any::<bool>(),
        port in any::<bool>(),
        split_namespace in any::<bool>(),
        named_default in any::<bool>(),
        explicit_endpoint in any::<bool>(),
    ) {
        let path = segments.join("/");
        let host = if upper { "HTTPS://Vault.Internal" } else { "https://vault.internal" };
        let address = format!("{host}{}{}", if port { ":443" } else { "" }, if slash { "/" } else { "" });
        let (namespace, mount) = if split_namespace {
            ("namespace = \"team\"\n", if slash { "/kv/" } else { "kv" })
        } else {
            ("", "team/kv")
        };
        let sinks = format!(
            "[sinks.one]\ntype = \"vault\"\naddress = \"https://vault.internal\"\nmount = \"team/kv\"\nauth = {{ method = \"token\", token = {{ env = \"T\" }} }}\n\
             [sinks.two]\ntype = \"vault\"\naddress = \"{address}\"\nmount = \"{mount}\"\n{namespace}auth = {{ method = \"token\", token = {{ env = \"T\" }} }}\n"
        );
        let err = two_places(&sinks, ("one", &path), ("two", &path));
        prop_assert!(err.as_deref().is_some_and(|e| e.contains("is the same place as")), "{sinks}: {err:?}");
        let aws = format!(
            "[sinks.one]\ntype = \"aws-secrets-manager\"\nregion = \"us-east-1\"\n\
             [sinks.two]\ntype = \"aws-secrets-manager\"\nregion = \"{}\"\n{}{}",
            if upper { "US-EAST-1" } else { "us-east-1" },
            if named_default { "profile = \"default\"\n" } else { "" },
            if explicit_endpoint { "endpoint_url = \"https://secretsmanager.us-east-1.amazonaws.com/\"\n" } else { "" },
        );
        let err = two_places(&aws, ("one", &path), ("two", &path));
        prop_assert!(err.as_deref().is_some_and(|e| e.contains("is the same place as")), "{aws}: {err:?}");
    }
}
