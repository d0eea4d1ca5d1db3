//! A policy of thousands of integrations, parsed one `[[integrations]]`
//! section at a time.
//!
//! `toml` lexes a whole document into a token vector and builds a
//! span-carrying tree before serde sees any of it: 25 MB for 10,000
//! integrations (690 KB of text), most of the peak memory of a pass. Each
//! `[[integrations]]` section is a document of its own, so this finds the
//! sections with a streaming lex (no allocation per token), parses the rest
//! of the file (the root) as one document and each section alone: the peak
//! is that of one section.
//!
//! It is a fast path, nothing more. When the layout is unusual (a quoted
//! first key in a table header, an `integrations.*` header outside a
//! section, `integrations` also set as a root key) or when any part does not
//! parse or deserialize, [`Sections::parse`] (or the section iterator) answers `None` and the caller parses the
//! whole document as one, which reports errors (lines, columns, key paths)
//! exactly as it always did.

use std::ops::Range;

use serde::Deserialize;
use toml_parser::Source;
use toml_parser::lexer::TokenKind;

use super::error::PolicyError;
use super::file::{IntegrationConfig, PolicyConfig};

/// Where the sections and the rest of a document are.
#[derive(Debug, Default, PartialEq, Eq)]
struct Layout {
    /// The byte ranges outside every section, in order.
    root: Vec<Range<usize>>,
    /// The byte ranges of the `[[integrations]]` sections, in order: each
    /// from its header to the next header of another table.
    sections: Vec<Range<usize>>,
}

/// A policy whose root parsed, with its `[[integrations]]` sections still
/// to parse, one at a time.
pub(super) struct Sections<'a> {
    text: &'a str,
    root: PolicyConfig,
    sections: Vec<Range<usize>>,
}

impl<'a> Sections<'a> {
    /// The root of `text` parsed and its sections found; `None` when the
    /// whole document must be parsed as one (see the module's doc).
    pub(super) fn parse(text: &'a str) -> Option<Self> {
        let layout = layout(text)?;
        let root = if let [only] = layout.root.as_slice() {
            std::borrow::Cow::Borrowed(text.get(only.clone())?)
        } else {
            let mut joined = String::new();
            for r in &layout.root {
                joined.push_str(text.get(r.clone())?);
            }
            std::borrow::Cow::Owned(joined)
        };
        let doc = toml::de::DeTable::parse(&root).ok()?;
        let sets_integrations = doc.get_ref().iter().any(|(k, _)| k.get_ref() == "integrations");
        if sets_integrations && !layout.sections.is_empty() {
            return None;
        }
        check_version(doc.get_ref(), &root).ok()?;
        let root = PolicyConfig::deserialize(toml::Deserializer::from(doc)).ok()?;
        Some(Self {
            text,
            root,
            sections: layout.sections,
        })
    }

    /// How many sections.
    pub(super) fn len(&self) -> usize {
        self.sections.len()
    }

    /// The root, and each section parsed when the iterator reaches it
    /// (`None` for one that does not parse alone: the whole document must
    /// then be parsed as one, for its errors).
    pub(super) fn into_parts(self) -> (PolicyConfig, impl Iterator<Item = Option<IntegrationConfig>> + 'a) {
        let text = self.text;
        let each = self
            .sections
            .into_iter()
            .map(move |r| text.get(r).and_then(parse_section));
        (self.root, each)
    }
}

/// Reads `version` first, so that a future format gets a clear message
/// instead of a list of unknown keys.
pub(super) fn check_version(doc: &toml::de::DeTable<'_>, text: &str) -> Result<(), PolicyError> {
    let version = doc
        .iter()
        .find(|(k, _)| k.get_ref() == "version")
        .map(|(_, v)| v.get_ref());
    match version {
        None => Err(PolicyError::invalid(
            "version",
            "is required: start the policy with `version = 1`",
        )),
        Some(toml::de::DeValue::Integer(i))
            if i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) == Ok(1) =>
        {
            Ok(())
        }
        // Rare: the value as TOML writes it, for the message.
        Some(_) => {
            let shown = toml::from_str::<toml::Table>(text)
                .ok()
                .and_then(|t| t.get("version").map(ToString::to_string))
                .unwrap_or_else(|| "not 1".into());
            Err(PolicyError::invalid(
                "version",
                format!("is {shown}, but this build of mixpanel-rotator reads policy version 1"),
            ))
        }
    }
}

/// One `[[integrations]]` section, which is a valid document on its own.
fn parse_section(text: &str) -> Option<IntegrationConfig> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        integrations: Vec<IntegrationConfig>,
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    let section = Section::deserialize(toml::Deserializer::from(doc)).ok()?;
    let mut one = section.integrations.into_iter();
    match (one.next(), one.next()) {
        (Some(i), None) => Some(i),
        _ => None,
    }
}

/// Finds the `[[integrations]]` sections: a table header is a `[` first on
/// its line outside any array or inline table (strings and comments are
/// single tokens, so a bracket inside them is never seen). `None` for a
/// layout that only the whole-document parser may judge.
fn layout(text: &str) -> Option<Layout> {
    let mut out = Layout::default();
    let mut tokens = Source::new(text)
        .lex()
        .filter(|t| !matches!(t.kind(), TokenKind::Whitespace | TokenKind::Comment))
        .peekable();
    let mut depth = 0usize;
    let mut line_start = true;
    let mut in_section = false;
    let mut cut = 0usize;
    while let Some(token) = tokens.next() {
        match token.kind() {
            TokenKind::Eof => break,
            TokenKind::Newline => {
                line_start = true;
                continue;
            }
            TokenKind::LeftSquareBracket if depth == 0 && line_start => {
                let start = token.span().start();
                let array = tokens
                    .next_if(|n| n.kind() == TokenKind::LeftSquareBracket && n.span().start() == token.span().end());
                let first = tokens.next()?;
                if first.kind() != TokenKind::Atom {
                    return None;
                }
                let dotted = tokens.peek().is_some_and(|n| n.kind() == TokenKind::Dot);
                if text.get(first.span().start()..first.span().end())? == "integrations" {
                    match (array.is_some(), dotted) {
                        (true, false) => {
                            close(&mut out, in_section, cut..start);
                            in_section = true;
                            cut = start;
                        }
                        (_, true) if in_section => {}
                        _ => return None,
                    }
                } else if in_section {
                    close(&mut out, true, cut..start);
                    in_section = false;
                    cut = start;
                }
            }
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => {
                depth = depth.saturating_add(1);
            }
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        line_start = false;
    }
    close(&mut out, in_section, cut..text.len());
    Some(out)
}

/// Ends a range: a section, or a piece of the root (empty ones dropped).
fn close(out: &mut Layout, section: bool, range: Range<usize>) {
    if section {
        out.sections.push(range);
    } else if !range.is_empty() {
        out.root.push(range);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEAD: &str =
        "version = 1\n[mixpanel]\nregion = \"us\"\norganization_id = 1\nusername = \"u\"\nsecret = { env = \"X\" }\n";

    /// The policy as the whole-document parser reads it (`Debug`, or the error).
    fn whole(text: &str) -> Result<String, String> {
        let doc = toml::de::DeTable::parse(text).map_err(|e| e.to_string())?;
        PolicyConfig::deserialize(toml::Deserializer::from(doc))
            .map(|c| format!("{c:?}"))
            .map_err(|e| e.to_string())
    }

    /// The fast path's policy, `None` where it leaves the text to the whole parser.
    fn parse(text: &str) -> Option<PolicyConfig> {
        let (mut root, each) = Sections::parse(text)?.into_parts();
        for i in each {
            root.integrations.push(i?);
        }
        Some(root)
    }

    /// Whatever the fast path accepts, the whole-document parser reads the same.
    fn agrees(text: &str) -> bool {
        match parse(text) {
            Some(c) => whole(text) == Ok(format!("{c:?}")),
            None => true,
        }
    }

    #[test]
    fn splits_at_integration_headers_only() {
        let text = format!(
            "{HEAD}[sinks.f]\ntype = \"file\"\ndir = \"/tmp\"\n\
             [[integrations]]\nname = \"a\"\nsink = \"f\"\npath = \"a\"\n\
             [[integrations.mirrors]] # a copy\nsink = \"f\"\npath = \"a2\"\n\
             [integrations.webhook]\nurl = {{ env = \"W\" }}\n\
             [daemon]\nspread = \"0s\"\n\
               [[ integrations ]]\nname = \"b\"\nsink = \"f\"\npath = \"b\"\nprojects = [\n[1],\n{{ id = 1, role = \"consumer\" }},\n]\n"
        );
        let l = layout(&text).unwrap();
        assert_eq!(l.sections.len(), 2);
        assert_eq!(l.root.len(), 2);
        assert!(text[l.sections[0].clone()].starts_with("[[integrations]]\nname = \"a\""));
        assert!(text[l.sections[0].clone()].ends_with("url = { env = \"W\" }\n"));
        assert!(text[l.root[1].clone()].starts_with("[daemon]"));
        assert!(text[l.sections[1].clone()].starts_with("[[ integrations ]]"));
        // The bracket first on a line inside `projects` is no header.
        assert!(text[l.sections[1].clone()].ends_with("]\n"));
    }

    #[test]
    fn the_fast_path_reads_what_the_whole_parser_reads() {
        let text = format!(
            "{HEAD}[sinks.f]\ntype = \"file\"\ndir = \"/tmp\"\n\
             [[integrations]]\nname = \"a\"\nsink = \"f\"\npath = \"a\"\nadopt = 5\n\
             [[integrations.mirrors]]\nsink = \"f\"\npath = \"a2\"\n\
             [audit]\npath = \"/tmp/audit\"\n\
             [[integrations]]\nname = \"b\"\nsink = \"f\"\npath = \"b\"\nadopt = \"x\"\nttl = \"10d\" # short\n"
        );
        let fast = parse(&text).expect("an ordinary layout takes the fast path");
        assert_eq!(fast.integrations.len(), 2);
        assert_eq!(fast.integrations[1].name, "b");
        assert!(agrees(&text));
    }

    /// Layouts the fast path must leave to the whole-document parser.
    #[test]
    fn unusual_layouts_are_left_to_the_whole_parser() {
        let a = "[[integrations]]\nname = \"a\"\nsink = \"f\"\npath = \"a\"\n";
        for text in [
            format!("{HEAD}{a}[\"integrations\".x]\ny = 1\n"),
            format!("integrations = []\n{HEAD}{a}"),
            format!("integrations.x = 1\n{HEAD}{a}"),
            format!("{HEAD}[daemon]\n{a}[daemon]\n[integrations.webhook]\nurl = {{ env = \"W\" }}\n"),
            format!("{HEAD}[integrations]\n"),
            format!("{HEAD}{a}nope = 1\n"),
            format!("{HEAD}{a}name = \"again\"\n"),
            format!("{HEAD}{a}[[integrations.mirrors]\n"),
            format!("{HEAD}x = [\n{a}"),
            format!("{HEAD}x = 1]\n{a}"),
            format!("version = 2\n{a}"),
        ] {
            assert!(parse(&text).is_none(), "{text}");
        }
    }

    /// A block of policy text: valid sections and root tables of every
    /// shape (sub-tables, multi-line arrays, brackets in strings and
    /// comments), or (`true`) noise the fast path must not misread.
    fn block() -> impl Strategy<Value = (usize, bool)> {
        prop_oneof![
            4 => (0..BLOCKS.len()).prop_map(|i| (i, false)),
            1 => (0..NOISE.len()).prop_map(|i| (i, true)),
        ]
    }

    const BLOCKS: &[&str] = &[
        "[[integrations]]\nname = \"i{n}\"\nsink = \"f\"\npath = \"p{n}\"\n",
        "[[ integrations ]] # [x]\nname = \"i{n}\"\nsink = \"f\"\npath = \"[[integrations]]{n}\"\nadopt = {n}\n",
        "[[integrations]]\nname = \"i{n}\"\nsink = \"f\"\npath = \"p{n}\"\non_rotate = ['''\n[[integrations]]\n''']\n\
         [[integrations.mirrors]]\nsink = \"f\"\npath = \"m{n}\"\n[integrations.webhook]\nurl = { env = \"W\" }\n",
        "[[integrations]]\nname = \"i{n}\"\nsink = \"f\"\npath = \"p{n}\"\nprojects = [\n# [[integrations]]\n{ id = 1, role = \"consumer\" },\n]\n",
        "[sinks.s{n}]\ntype = \"file\"\ndir = \"/tmp\"\n",
        "[daemon]\n",
        "# [[integrations]]\n\n",
        "[audit]\npath = \"/tmp/a\"\n",
        "[mixpanel.self]\nsink = \"f\"\npath = \"own{n}\"\n",
    ];

    const NOISE: &[&str] = &[
        "[integrations]\n",
        "[\"integrations\"]\n",
        "[[\"integrations\"]]\nname = \"q\"\nsink = \"f\"\npath = \"q\"\n",
        "integrations.x = 1\n",
        "integrations = []\n",
        "[integrations.webhook]\nurl = { env = \"W\" }\n",
        "x = [\n",
        "]\n",
        "nope = 1\n",
        "name = \"again\"\n",
        "[[integrations.mirrors]]\nsink = \"f\"\npath = \"m\"\n",
        "[ [integrations]]\n",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Over random documents: whenever the fast path gives a policy, it
        /// is the one the whole parser gives; without noise (and without a
        /// table defined twice) it always gives one.
        #[test]
        fn never_disagrees(
            root in prop::sample::select(vec!["", "integrations = []\n", "integrations = 1\n", "integrations.x = 1\n"]),
            blocks in prop::collection::vec(block(), 0..12),
        ) {
            let mut text = format!("{root}{HEAD}[sinks.f]\ntype = \"file\"\ndir = \"/tmp\"\n");
            for (n, (i, noise)) in blocks.iter().enumerate() {
                let b = if *noise { NOISE[*i] } else { BLOCKS[*i] };
                text.push_str(&b.replace("{n}", &n.to_string()));
            }
            prop_assert!(agrees(&text), "{}", text);
            let clean = root.is_empty() && blocks.iter().all(|(_, noise)| !noise);
            let twice = |k| blocks.iter().filter(|(i, noise)| !noise && *i == k).count() > 1;
            if clean && !twice(5) && !twice(7) && !twice(8) {
                prop_assert!(parse(&text).is_some(), "{}", text);
            }
        }
    }
}
