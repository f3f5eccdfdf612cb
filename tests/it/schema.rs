//! `lethe schema`: the JSON Schema of retention.yaml. The checked-in
//! `retention.schema.json` is its output (so it never goes stale); every key has a
//! description; the shipped configs, the profiles and the README's examples are valid
//! against it (the `jsonschema` crate, draft 2020-12), and bad configs that are wrong in
//! shape (unknown key, wrong type, a value out of range or not among the fixed words)
//! are rejected by it as by the parser.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const LETHE: &str = env!("CARGO_BIN_EXE_lethe");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("retention.schema.json")).unwrap(),
    )
    .unwrap();
    jsonschema::draft202012::new(&schema).unwrap()
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
}

/// The schema errors of `doc`, one line each.
fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_checked_in_schema_is_what_lethe_schema_prints() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(LETHE)
        .current_dir(dir.path())
        .arg("schema")
        .env("LETHE_CONFIG", dir.path().join("none.yaml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8(o.stdout).unwrap();
    let checked_in = std::fs::read_to_string(root().join("retention.schema.json")).unwrap();
    assert!(
        printed == checked_in,
        "retention.schema.json is stale: run `cargo run -- schema > retention.schema.json`"
    );
    assert_eq!(printed, lethe::config::schema::json_schema_text());
    let v: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(
        v["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{printed}"
    );
}

/// Every property of every object in the schema, with its path.
fn properties<'a>(v: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (k, p) in props {
                    out.push((format!("{path}.{k}"), p));
                }
            }
            for (k, child) in map {
                properties(child, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| properties(i, path, out)),
        _ => {}
    }
}

#[test]
fn every_key_has_a_description() {
    let schema = lethe::config::schema::json_schema();
    let mut props = Vec::new();
    properties(&schema, "", &mut props);
    assert!(props.len() > 80, "only {} keys", props.len());
    for (path, p) in &props {
        let d = p["description"].as_str().unwrap_or("");
        assert!(d.len() >= 10, "{path} has no real description: {d:?}");
        assert!(
            !d.contains('\n'),
            "{path}: description not unwrapped: {d:?}"
        );
    }
    // The keys the README documents are there, with their units.
    let safety = &schema["$defs"]["RawSafety"]["properties"];
    assert!(
        safety["batch_size"]["description"]
            .as_str()
            .unwrap()
            .contains("1 to 10000")
    );
    assert!(
        safety["max_clock_skew"]["description"]
            .as_str()
            .unwrap()
            .contains("minutes")
    );
    assert!(schema["properties"]["metrics"].is_object());
}

/// The YAML examples of the README that are whole documents (not indented fragments of
/// a class), each with the line it starts on.
fn readme_examples() -> Vec<(usize, String)> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        match &mut block {
            None if line.trim_start() == "```yaml" => block = Some((i + 2, String::new())),
            Some((start, text)) if line.trim_start() == "```" => {
                let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                if !first.starts_with(' ') {
                    out.push((*start, std::mem::take(text)));
                }
                block = None;
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn shipped_configs_profiles_and_readme_examples_are_valid() {
    let v = validator();
    for file in ["retention.yaml", "contrib/retention.yaml"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema="),
            "{file} does not start with the schema line"
        );
        let errs = errors(&v, &yaml(&text));
        assert!(errs.is_empty(), "{file}: {errs:#?}");
        // And the parser accepts it too (the schema is never the only judge).
        if file == "retention.yaml" {
            lethe::config::load(&root().join(file)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    // The Debian package installs the schema where contrib/retention.yaml points.
    let contrib = std::fs::read_to_string(root().join("contrib/retention.yaml")).unwrap();
    assert!(
        contrib.starts_with(
            "# yaml-language-server: $schema=/usr/share/lethe/retention.schema.json\n"
        )
    );
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(
        cargo.contains(
            r#"["retention.schema.json", "usr/share/lethe/retention.schema.json", "644"]"#
        )
    );

    // The profiles are classes in the same language: valid as a file's classes.
    for (name, text) in [
        ("koha", lethe::config::KOHA_PROFILE),
        ("evergreen", lethe::config::EVERGREEN_PROFILE),
    ] {
        let mut doc = yaml(text);
        doc.as_object_mut().unwrap().remove("description");
        // The inventory is read by `lethe inventory` from the profile only: no key of
        // retention.yaml.
        doc.as_object_mut().unwrap().remove("inventory");
        let errs = errors(&v, &doc);
        assert!(errs.is_empty(), "profile {name}: {errs:#?}");
    }

    let examples = readme_examples();
    assert!(examples.len() >= 3, "{examples:?}");
    let (_, config_example) = examples
        .iter()
        .find(|(_, t)| t.contains("library: Demo Public Library"))
        .expect("the README's Configuration example");
    assert!(
        config_example.starts_with("# yaml-language-server: $schema=retention.schema.json\n"),
        "the README's Configuration example does not start with the schema line"
    );
    for (line, text) in &examples {
        let errs = errors(&v, &yaml(text));
        assert!(errs.is_empty(), "README.md:{line}: {errs:#?}\n{text}");
    }
}

#[test]
fn bad_configs_wrong_in_shape_are_rejected_by_the_schema_too() {
    let v = validator();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-config");
    for (file, pointer) in [
        ("unknown-top-key.yaml", ""),
        ("unknown-class-key.yaml", "/classes/circulation_history"),
        ("wrong-type.yaml", "/safety/batch_size"),
        ("batch-size-too-large.yaml", "/safety/batch_size"),
        ("batch-size-zero.yaml", "/safety/batch_size"),
        ("batch-max-too-large.yaml", "/safety/batch_max"),
        ("max-fraction.yaml", "/safety/max_fraction"),
        ("unknown-report-on.yaml", "/report/on"),
        ("unknown-action.yaml", "/classes/circulation_history/action"),
        ("unknown-profile.yaml", "/profile"),
        (
            "unknown-reason.yaml",
            "/classes/circulation_history/exempt/0/reason",
        ),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        // The parser rejects it (the corpus test checks how) ...
        assert!(lethe::config::load(&dir.join(file)).is_err(), "{file}");
        // ... and so does the schema, at the same key.
        let doc = yaml(&text);
        let at: Vec<String> = v
            .iter_errors(&doc)
            .map(|e| e.instance_path().to_string())
            .collect();
        assert!(!at.is_empty(), "{file} is valid against the schema");
        // A section is `anyOf: [section, null]` (an empty `safety:` is allowed), so
        // the error may be reported at the section that holds the key.
        let near = |p: &String| p == pointer || (!p.is_empty() && pointer.starts_with(p.as_str()));
        assert!(
            at.iter().any(near),
            "{file}: expected an error at {pointer:?}, got {at:?}"
        );
    }
}
