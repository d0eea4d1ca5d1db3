//! Invalid policies: each is rejected with a message naming the key.

use mixpanel_rotator::mixpanel::ProjectRole;
use mixpanel_rotator::policy::{Policy, ProjectsSpec};

const BASE_MIXPANEL: &str = r#"[mixpanel]
region = "us"
organization_id = 123
username = "rotator.abc.mp-service-account"
secret = { env = "MIXPANEL_ROTATOR_SECRET" }
"#;

const SINK: &str = r#"[sinks.local]
type = "file"
dir = "/run/mixpanel-rotator"
"#;

const ETL: &str = r#"[[integrations]]
name = "etl"
sink = "local"
path = "etl.json"
adopt = 1001
"#;

fn policy(parts: &[&str]) -> String {
    parts.join("\n")
}

#[test]
fn a_valid_policy_loads() {
    let p = Policy::parse(&policy(&["version = 1", BASE_MIXPANEL, SINK, ETL])).unwrap();
    let i = &p.integrations[0];
    assert_eq!(i.ttl, chrono::Duration::days(30));
    assert_eq!(i.renew_before, chrono::Duration::days(10));
    assert_eq!(i.grace, chrono::Duration::hours(24));
    assert_eq!(i.orphan_after, chrono::Duration::minutes(15));
    assert_eq!(i.jitter, chrono::Duration::zero());
    assert_eq!(p.namespace, "mpr");
    assert_eq!(p.mixpanel.base_url, "https://mixpanel.com/api/app");
    assert_eq!(p.mixpanel.max_concurrency, 3);
    assert!(i.mirrors.is_empty());
    assert_eq!(p.mirror_interval, chrono::Duration::minutes(1));
}

#[test]
fn the_shipped_example_policy_loads() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml")).unwrap();
    let p = Policy::parse(&text).unwrap_or_else(|e| panic!("config/example.toml: {e}"));
    assert!(!p.integrations.is_empty());
}

#[test]
fn defaults_are_overridden_per_integration() {
    let p = Policy::parse(&policy(&[
        "version = 1",
        BASE_MIXPANEL,
        "[defaults]\nttl = \"7d\"\ngrace = \"1h\"\nrole = \"analyst\"\nschedule = \"0 4 * * MON\"",
        SINK,
        ETL,
        "[[integrations]]\nname = \"ci\"\nsink = \"local\"\npath = \"ci.json\"\nttl = \"90d\"\nrenew_before = \"20d\"\nrole = \"consumer\"\nprojects = [{ id = 1, role = \"admin\" }]",
    ]))
    .unwrap();
    assert_eq!(p.integrations[0].ttl, chrono::Duration::days(7));
    assert_eq!(p.integrations[0].grace, chrono::Duration::hours(1));
    assert_eq!(p.integrations[0].schedule.as_ref().unwrap().as_str(), "0 4 * * MON");
    assert_eq!(p.integrations[1].ttl, chrono::Duration::days(90));
    assert_eq!(p.integrations[1].renew_before, chrono::Duration::days(20));
    assert_eq!(p.integrations[1].role, mixpanel_rotator::mixpanel::Role::Consumer);
    assert_eq!(p.integrations[0].role, mixpanel_rotator::mixpanel::Role::Analyst);
}

#[test]
fn explicit_projects_may_name_a_custom_role() {
    let p = Policy::parse(&policy(&[
        "version = 1",
        BASE_MIXPANEL,
        SINK,
        &format!("{ETL}projects = [{{ id = 456, role = \"Data Steward\" }}, {{ id = 457, role = \"Admin\" }}]"),
    ]))
    .unwrap();
    let ProjectsSpec::Explicit(grants) = &p.integrations[0].projects else {
        panic!("explicit projects")
    };
    assert_eq!(grants[0].role, ProjectRole::Custom("Data Steward".into()));
    assert_eq!(grants[1].role, ProjectRole::Admin);
}

#[test]
fn invalid_policies_name_the_key() {
    let m_without = |line: &str| {
        BASE_MIXPANEL
            .lines()
            .filter(|l| !l.starts_with(line))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "missing version",
            policy(&[BASE_MIXPANEL, SINK, ETL]),
            &["`version`", "version = 1"],
        ),
        (
            "future version",
            policy(&["version = 2", BASE_MIXPANEL, SINK, ETL]),
            &["`version`", "reads policy version 1"],
        ),
        (
            "unknown top-level key",
            policy(&["version = 1\ncolour = \"red\"", BASE_MIXPANEL, SINK, ETL]),
            &["colour"],
        ),
        (
            "unknown mixpanel key",
            policy(&["version = 1", &format!("{BASE_MIXPANEL}regoin = \"eu\""), SINK, ETL]),
            &["`mixpanel.regoin`", "unknown field"],
        ),
        (
            "inline secret",
            policy(&[
                "version = 1",
                &BASE_MIXPANEL.replace("{ env = \"MIXPANEL_ROTATOR_SECRET\" }", "\"hunter2\""),
                SINK,
                ETL,
            ]),
            &["`mixpanel.secret`", "never written inline"],
        ),
        (
            "bad secret reference",
            policy(&[
                "version = 1",
                &BASE_MIXPANEL.replace("{ env = \"MIXPANEL_ROTATOR_SECRET\" }", "{ vault = \"x\" }"),
                SINK,
                ETL,
            ]),
            &["`mixpanel.secret`", "vault"],
        ),
        (
            "no region nor base_url",
            policy(&["version = 1", &m_without("region"), SINK, ETL]),
            &["`mixpanel.region`"],
        ),
        (
            "region and base_url",
            policy(&[
                "version = 1",
                &format!("{BASE_MIXPANEL}base_url = \"https://x.example/api/app\""),
                SINK,
                ETL,
            ]),
            &["`mixpanel.base_url`", "both"],
        ),
        (
            "plain http to a remote host",
            policy(&[
                "version = 1",
                &m_without("region").replace(
                    "[mixpanel]",
                    "[mixpanel]\nbase_url = \"http://mixpanel.example.com/api/app\"",
                ),
                SINK,
                ETL,
            ]),
            &["`mixpanel.base_url`", "https"],
        ),
        (
            "bad region",
            policy(&["version = 1", &BASE_MIXPANEL.replace("\"us\"", "\"mars\""), SINK, ETL]),
            &["`mixpanel.region`", "mars"],
        ),
        (
            "zero concurrency",
            policy(&["version = 1", &format!("{BASE_MIXPANEL}max_concurrency = 0"), SINK, ETL]),
            &["`mixpanel.max_concurrency`"],
        ),
        (
            "bad duration",
            policy(&["version = 1", BASE_MIXPANEL, SINK, &format!("{ETL}ttl = \"30 days\"")]),
            &["`integrations[0].ttl`", "30s"],
        ),
        (
            "bad default duration",
            policy(&["version = 1", BASE_MIXPANEL, "[defaults]\ngrace = \"1w\"", SINK, ETL]),
            &["`defaults.grace`"],
        ),
        (
            "ttl not longer than renew_before",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                ETL,
                "[[integrations]]\nname = \"ci\"\nsink = \"local\"\npath = \"ci.json\"\nadopt = 5\nttl = \"10d\"\nrenew_before = \"10d\"",
            ]),
            &["`integrations[1].ttl`", "longer than `renew_before`"],
        ),
        (
            "grace not shorter than ttl",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &format!("{ETL}ttl = \"2d\"\nrenew_before = \"1d\"\ngrace = \"2d\""),
            ]),
            &["`integrations[0].grace`", "shorter than `ttl`"],
        ),
        (
            "bad cron",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &format!("{ETL}schedule = \"0 4 * * MON *\""),
            ]),
            &["`integrations[0].schedule`", "5-field"],
        ),
        (
            "cron with seconds",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                "[defaults]\nschedule = \"0 0 4 * * 1\"",
                SINK,
                ETL,
            ]),
            &["`defaults.schedule`"],
        ),
        (
            "cron out of range",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &format!("{ETL}schedule = \"0 25 * * *\""),
            ]),
            &["`integrations[0].schedule`"],
        ),
        (
            "duplicate names",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                ETL,
                &ETL.replace("etl.json", "etl2.json").replace("1001", "1002"),
            ]),
            &["`integrations[1].name`", "unique"],
        ),
        (
            "name unusable in usernames",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &ETL.replace("name = \"etl\"", "name = \"ETL job\""),
            ]),
            &["`integrations[0].name`", "lowercase"],
        ),
        (
            "bad namespace",
            policy(&["version = 1\nnamespace = \"my-team\"", BASE_MIXPANEL, SINK, ETL]),
            &["`namespace`"],
        ),
        (
            "unknown sink",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &ETL.replace("sink = \"local\"", "sink = \"vault\""),
            ]),
            &["`integrations[0].sink`", "[sinks.vault]"],
        ),
        (
            "unknown sink type",
            policy(&["version = 1", BASE_MIXPANEL, &SINK.replace("\"file\"", "\"s3\""), ETL]),
            &["`sinks.local.type`", "s3"],
        ),
        (
            "relative file sink dir",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                &SINK.replace("/run/mixpanel-rotator", "creds"),
                ETL,
            ]),
            &["`sinks.local.dir`", "absolute"],
        ),
        (
            "world-readable file mode",
            policy(&["version = 1", BASE_MIXPANEL, &format!("{SINK}mode = \"0644\""), ETL]),
            &["`sinks.local.mode`", "never by others"],
        ),
        (
            "path escaping the sink",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &ETL.replace("etl.json", "../etc/passwd"),
            ]),
            &["`integrations[0].path`"],
        ),
        (
            "unknown integration key",
            policy(&["version = 1", BASE_MIXPANEL, SINK, &format!("{ETL}tll = \"30d\"")]),
            &["`integrations[0].tll`", "unknown field"],
        ),
        (
            "bad role",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &format!("{ETL}role = \"superuser\""),
            ]),
            &["`integrations[0].role`", "superuser"],
        ),
        (
            "bad projects",
            policy(&["version = 1", BASE_MIXPANEL, SINK, &format!("{ETL}projects = \"all\"")]),
            &["`integrations[0].projects`", "copy"],
        ),
        (
            "empty project role",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &format!("{ETL}projects = [{{ id = 1, role = \"\" }}]"),
            ]),
            &["`integrations[0].projects[0].role`", "not a role name"],
        ),
        (
            "owner project role",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &format!("{ETL}projects = [{{ id = 1, role = \"owner\" }}]"),
            ]),
            &["`integrations[0].projects`", "does not allow for service accounts"],
        ),
        (
            "owner organization role, inherited",
            policy(&["version = 1", BASE_MIXPANEL, "[defaults]\nrole = \"owner\"", SINK, ETL]),
            &["`defaults.role`", "is `owner`", "does not allow for service accounts"],
        ),
        (
            "same project twice",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &format!("{ETL}projects = [{{ id = 1, role = \"admin\" }}, {{ id = 1, role = \"analyst\" }}]"),
            ]),
            &["`integrations[0].projects`", "twice"],
        ),
        (
            "tiny orphan_after",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &format!("{ETL}orphan_after = \"10s\""),
            ]),
            &["`integrations[0].orphan_after`"],
        ),
        (
            "two integrations, one path",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                ETL,
                &ETL.replace("\"etl\"", "\"ci\"").replace("1001", "1002"),
            ]),
            &["`integrations[1].path`"],
        ),
        (
            "mirror on an undefined sink",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &format!("{ETL}mirrors = [{{ sink = \"pod\", path = \"etl.json\" }}]"),
            ]),
            &["`integrations[0].mirrors[0].sink`", "no `[sinks.pod]`"],
        ),
        (
            "mirror over its own primary",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &format!("{ETL}mirrors = [{{ sink = \"local\", path = \"etl.json\" }}]"),
            ]),
            &[
                "`integrations[0].mirrors[0].path`",
                "the same place as `integrations[0].path`",
            ],
        ),
        (
            "mirror over another integration's primary (another sink, same directory)",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                "[sinks.pod]\ntype = \"file\"\ndir = \"/run/mixpanel-rotator\"\n",
                &format!("{ETL}mirrors = [{{ sink = \"pod\", path = \"ci.json\" }}]"),
                &ETL.replace("\"etl\"", "\"ci\"")
                    .replace("1001", "1002")
                    .replace("etl.json", "ci.json"),
            ]),
            &[
                "`integrations[1].path`",
                "the same place as `integrations[0].mirrors[0].path`",
            ],
        ),
        (
            "mirror with an unknown key",
            policy(&[
                "version = 1",
                BASE_MIXPANEL,
                SINK,
                &format!("{ETL}mirrors = [{{ sink = \"local\", path = \"m.json\", mode = \"0644\" }}]"),
            ]),
            &["mirrors", "unknown field `mode`"],
        ),
        (
            "mirror_interval too short",
            policy(&[
                "version = 1",
                "[daemon]\nmirror_interval = \"1s\"",
                BASE_MIXPANEL,
                SINK,
                ETL,
            ]),
            &["`daemon.mirror_interval`", "at least `5s`"],
        ),
        (
            "grace shorter than the mirror interval",
            policy(&[
                "version = 1",
                "[daemon]\nmirror_interval = \"10m\"",
                BASE_MIXPANEL,
                SINK,
                "[sinks.pod]\ntype = \"file\"\ndir = \"/run/pod\"\n",
                &format!("{ETL}grace = \"5m\"\nmirrors = [{{ sink = \"pod\", path = \"etl.json\" }}]"),
            ]),
            &["`integrations[0].grace`", "shorter than `daemon.mirror_interval` (10m)"],
        ),
        ("not TOML", "version = 1\n[mixpanel\n".to_string(), &["TOML"]),
    ];
    let mut failures = vec![];
    for (what, text, needles) in &cases {
        match Policy::parse(text) {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(e) => {
                let msg = e.to_string();
                for n in needles.iter() {
                    if !msg.contains(n) {
                        failures.push(format!("{what}: message lacks {n:?}: {msg}"));
                    }
                }
                assert!(!msg.contains("hunter2"), "{what}: the message echoes the secret");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_systemd_credential_needs_credentials_directory() {
    let text = policy(&[
        "version = 1",
        &BASE_MIXPANEL.replace("{ env = \"MIXPANEL_ROTATOR_SECRET\" }", "{ credential = \"mixpanel\" }"),
        SINK,
        ETL,
    ]);
    let p = Policy::parse(&text).unwrap();
    assert_eq!(
        p.mixpanel.secret,
        mixpanel_rotator::values::SecretRef::Credential("mixpanel".into())
    );
    // Resolution without systemd's directory: the binary names the key and the fix.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, &text).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mixpanel-rotator"))
        .arg("--config")
        .arg(&cfg)
        .args(["validate", "--online"])
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("`mixpanel.secret`") && e.contains("LoadCredential=mixpanel"),
        "{e}"
    );
    let bad = text.replace("credential = \"mixpanel\"", "credential = \"../etc/shadow\"");
    assert!(
        Policy::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("`mixpanel.secret`")
    );
}
