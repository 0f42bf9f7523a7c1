//! Fuzzing the config file: mutated seeds and text edits.

use super::*;

/// Valid configs: the documented example and one using every field.
const SEEDS: &[&str] = &[
    include_str!("../../examples/config.yaml"),
    r#"
kubernetes: {kubeconfig: /tmp/kc, request_timeout: 5s}
probes:
  - name: full
    schedule: "0 */5 * * * *"
    deadline: 3m
    stage_deadlines: {eso_sync: 1m, secret_update: 1m, reloader_trigger: 1m, rollout: 2m, canary_observe: 1m, store_write: 10s}
    slo: {store_write: 1s, eso_sync: 10s, end_to_end: 90s}
    store:
      address: http://127.0.0.1:8200
      mount: kv
      path: team/canary/x
      path_prefix: team/canary
      max_versions: 3
      key: v
      namespace: ns1
      ca_bundle: /etc/ca.pem
      timeout: 2s
      auth: {approle: {mount: ar, role_id: r, secret_id: {env: SID}}}
    chain:
      namespace: canary
      external_secret: es
      secret: {name: s, key: v}
      rollout: {deployment: d, trigger: reloader}
      canary: {selector: "app=c,tier in (a, b),!legacy", port: 9000, source: env, timeout: 1s}
  - name: vol
    interval: 10s
    store:
      address: https://vault.example
      path: canary/vol
      auth: {kubernetes: {role: r, mount: k8s, token_file: /var/run/t}}
    chain:
      namespace: canary
      external_secret: es2
      secret: {name: s2}
      rollout: {deployment: d2, trigger: none}
      canary: {selector: app=v, source: file}
"#,
];

fn seed() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(SEEDS)
}

/// The config path serde_norway and the validator use for a node
/// (`probes[1].store.auth`).
fn config_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn error_text(e: &ConfigError) -> String {
    let mut t = e.to_string();
    for l in e.lines() {
        t.push('\n');
        t.push_str(&l);
    }
    t
}

/// One textual mutation of a YAML file.
#[derive(Debug, Clone)]
enum TextEdit {
    DeleteLine(prop::sample::Index),
    DuplicateLine(prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
    ReplaceValue(prop::sample::Index, String),
    Reindent(prop::sample::Index, usize),
    InsertChar(prop::sample::Index, char),
    Truncate(prop::sample::Index),
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    let ix = any::<prop::sample::Index>;
    prop_oneof![
        ix().prop_map(TextEdit::DeleteLine),
        ix().prop_map(TextEdit::DuplicateLine),
        (ix(), ix()).prop_map(|(a, b)| TextEdit::SwapLines(a, b)),
        (ix(), tricky_string()).prop_map(|(a, s)| TextEdit::ReplaceValue(a, s)),
        (ix(), 0usize..9).prop_map(|(a, n)| TextEdit::Reindent(a, n)),
        (
            ix(),
            prop::sample::select(vec![
                ':', '-', '{', '}', '[', ']', '"', '\'', '#', '&', '*', '!', '|', '>', '\t', ' ',
                '\n', '%', '@', '`', ',', '?'
            ])
        )
            .prop_map(|(a, c)| TextEdit::InsertChar(a, c)),
        ix().prop_map(TextEdit::Truncate),
    ]
}

fn apply_edit(text: &str, e: &TextEdit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return text.to_string();
    }
    match e {
        TextEdit::DeleteLine(i) => {
            lines.remove(i.index(lines.len()));
        }
        TextEdit::DuplicateLine(i) => {
            let n = i.index(lines.len());
            lines.insert(n, lines[n].clone());
        }
        TextEdit::SwapLines(a, b) => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        TextEdit::ReplaceValue(i, v) => {
            let n = i.index(lines.len());
            if let Some((k, _)) = lines[n].split_once(": ") {
                lines[n] = format!("{k}: {v}");
            }
        }
        TextEdit::Reindent(i, by) => {
            let n = i.index(lines.len());
            lines[n] = format!("{}{}", " ".repeat(*by), lines[n].trim_start());
        }
        TextEdit::InsertChar(i, c) => {
            let t = lines.join("\n");
            let chars: Vec<char> = t.chars().collect();
            let at = i.index(chars.len() + 1);
            let mut out: String = chars[..at].iter().collect();
            out.push(*c);
            out.extend(&chars[at..]);
            return out;
        }
        TextEdit::Truncate(i) => {
            let t = lines.join("\n");
            let chars: Vec<char> = t.chars().collect();
            return chars[..i.index(chars.len() + 1)].iter().collect();
        }
    }
    lines.join("\n")
}

/// Every error line names a field or a position.
fn assert_names_something(e: &ConfigError) {
    match e {
        ConfigError::Invalid { problems, .. } => {
            assert!(!problems.is_empty());
            for p in problems {
                assert!(
                    p.field.starts_with("probes") || p.field.starts_with("kubernetes"),
                    "problem without a field path: {p}"
                );
                assert!(
                    !p.message.trim().is_empty(),
                    "empty message for {}",
                    p.field
                );
            }
        }
        ConfigError::Syntax { message, .. } => assert!(!message.trim().is_empty()),
        ConfigError::Read { .. } => panic!("from_yaml never reads files"),
    }
}

#[test]
fn seeds_are_valid() {
    for s in SEEDS {
        if let Err(e) = Config::from_yaml(s, "seed.yaml") {
            panic!("seed invalid: {}", error_text(&e));
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary text: no panic, and any error says where or what.
    #[test]
    fn config_arbitrary_text(text in prop_oneof![".*", "[ -~\n\t]{0,400}"]) {
        if let Err(e) = Config::from_yaml(&text, "fuzz.yaml") {
            assert_names_something(&e);
        }
    }

    /// Arbitrary YAML documents built from the config's own field names.
    #[test]
    fn config_arbitrary_documents(doc in any_json(), wrap in any::<bool>()) {
        let doc = if wrap { json!({"probes": [doc]}) } else { doc };
        let text = serde_norway::to_string(&doc).unwrap();
        if let Err(e) = Config::from_yaml(&text, "fuzz.yaml") {
            assert_names_something(&e);
        }
    }

    /// Valid files with textual damage.
    #[test]
    fn config_mutated_text(seed in seed(), edits in prop::collection::vec(text_edit(), 1..5)) {
        let mut text = seed.to_string();
        for e in &edits {
            text = apply_edit(&text, e);
        }
        if let Err(e) = Config::from_yaml(&text, "fuzz.yaml") {
            assert_names_something(&e);
        }
    }

    /// Valid files with one node replaced, removed or given an extra key:
    /// a rejection inside `probes[i]` names `probes[i]` (serde's path or
    /// the validator's field).
    #[test]
    fn config_mutated_structure(seed in seed(), pick in any::<prop::sample::Index>(), m in mutation()) {
        let mut doc: Value = serde_norway::from_str(seed).unwrap();
        let path = mutate(&mut doc, pick, m);
        let text = serde_norway::to_string(&doc).unwrap();
        if let Err(e) = Config::from_yaml(&text, "fuzz.yaml") {
            assert_names_something(&e);
            if path.len() >= 2 && matches!(&path[0], Seg::Key(k) if k == "probes") {
                let probe = config_path(&path[..2]);
                let t = error_text(&e);
                prop_assert!(t.contains(&probe), "mutated {} but the error does not name {probe}:\n{t}", config_path(&path));
            }
        }
    }
}
