//! The public retention schedule (`lethe policy`): for each kind of record, in plain
//! words for a general audience, what it is, how long it is kept, what happens then,
//! and the exceptions. It is written from the same configuration that is enforced, and
//! its footer carries the policy hash stored with every run in the ledger, so the
//! published page can be matched to what was done. Library privacy policies (the ALA's
//! interpretation of the Library Bill of Rights) ask that patrons be told this.

use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use crate::config::{ClassDef, Config, Reason};
use crate::summary::Action;

/// The SHA-256 (hex) of the effective policy, as stored with each run.
pub fn policy_hash(cfg: &Config) -> String {
    hex::encode(Sha256::digest(crate::engine::policy_json(cfg).as_bytes()))
}

/// One kind of record, in plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// A heading: the class name in words ("Circulation history").
    pub title: String,
    /// What it is (the class's description).
    pub what: String,
    /// How long it is kept.
    pub how_long: String,
    /// What happens then.
    pub then: String,
    /// The exceptions, one sentence each.
    pub exceptions: Vec<String>,
}

fn title(name: &str) -> String {
    let words = name.replace('_', " ");
    let mut c = words.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The plain-words entry of a class.
pub fn entry(class: &ClassDef) -> Entry {
    let what = if class.description.trim().is_empty() {
        format!(
            "Records kept in the library system's {} table.",
            class.table
        )
    } else {
        class.description.trim().to_string()
    };
    let how_long = format!(
        "{}, counted from {}.",
        class.retain,
        class.age.meaning.trim()
    );
    let then = match class.action {
        Action::Anonymize => {
            "It is anonymized: the record stays, for the library's statistics, but it no longer points to you."
                .to_string()
        }
        Action::Delete => "It is deleted.".to_string(),
        Action::Aggregate => {
            "It is counted into the library's monthly statistics (by branch, kind of item and kind of \
             account, never by person), then deleted."
                .to_string()
        }
        Action::Pseudonymize => {
            "It is pseudonymized: the record stays, for the library's statistics, but your patron number \
             in it is replaced by a code that cannot be traced back to you without a secret key the \
             library keeps apart from the data."
                .to_string()
        }
        Action::Purge => {
            "It is purged by the library system's own procedure: your personal details are erased and what \
             is linked to you is deleted or kept only as statistics that no longer point to you."
                .to_string()
        }
    };
    let mut exceptions = Vec::new();
    if !class.immediate.is_empty() {
        exceptions.push(
            "If you chose not to keep any history, it is removed at the next nightly run, whatever its age.".to_string(),
        );
    }
    let mut reasons: Vec<Reason> = class.exempt.iter().map(|(r, _)| *r).collect();
    reasons.dedup();
    for r in reasons {
        exceptions.push(
            match r {
                Reason::OptIn => {
                    "You chose to keep your history: it is kept for as long as you keep that choice. You can change \
                     it at any time, and the history is then removed at the next run."
                }
                Reason::LegalHold => "A legal requirement, such as a court order, requires the library to keep it.",
                Reason::Obligations => {
                    "Something is still checked out, on hold, or owed (either way): it is kept until that is settled."
                }
                Reason::Protected => {
                    "The account belongs to library staff, to the guarantor of another patron, or is protected by \
                     the library."
                }
            }
            .to_string(),
        );
    }
    Entry {
        title: title(&class.name),
        what,
        how_long,
        then,
        exceptions,
    }
}

/// The schedule as Markdown, dated `date`.
pub fn markdown(cfg: &Config, date: NaiveDate) -> String {
    let mut out = format!(
        "# How long {} keeps your records\n\n\
         The library keeps records about your use of it only as long as it needs them. \
         This schedule lists each kind of record, how long it is kept, and what happens then. \
         It is enforced automatically every night.\n",
        cfg.library
    );
    for c in &cfg.classes {
        let e = entry(c);
        out.push_str(&format!(
            "\n## {}\n\n{}\n\n- **How long it is kept:** {}\n- **Then:** {}\n",
            e.title, e.what, e.how_long, e.then
        ));
        if !e.exceptions.is_empty() {
            out.push_str("- **Exceptions:**\n");
            for x in &e.exceptions {
                out.push_str(&format!("  - {x}\n"));
            }
        }
    }
    out.push_str(&format!(
        "\n---\n\nPolicy {} (SHA-256), published {}. Each enforcement run records this hash in the library's \
         audit ledger.\n",
        policy_hash(cfg),
        date.format("%Y-%m-%d")
    ));
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The schedule as a standalone HTML page, dated `date`. Every text is escaped. It
/// carries a viewport meta tag and breaks the policy hash anywhere, so it fits a phone
/// (390 px) without scrolling sideways (`tests/it/browser.rs` checks it in Chromium).
pub fn html(cfg: &Config, date: NaiveDate) -> String {
    let lib = esc(&cfg.library);
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>How long {lib} keeps your records</title>\n\
         <style>body{{font-family:sans-serif;max-width:42em;margin:2em auto;padding:0 1em;line-height:1.5}}\
         dt{{font-weight:bold}}dd{{margin-left:1.5em}}\
         code{{word-break:break-all;overflow-wrap:anywhere}}\
         footer{{color:#555;font-size:.9em;border-top:1px solid #ccc;margin-top:2em}}</style>\n\
         </head>\n<body>\n<h1>How long {lib} keeps your records</h1>\n\
         <p>The library keeps records about your use of it only as long as it needs them. This schedule lists each \
         kind of record, how long it is kept, and what happens then. It is enforced automatically every night.</p>\n"
    );
    for c in &cfg.classes {
        let e = entry(c);
        out.push_str(&format!(
            "<section>\n<h2>{}</h2>\n<p>{}</p>\n<dl>\n<dt>How long it is kept</dt><dd>{}</dd>\n<dt>Then</dt><dd>{}</dd>\n",
            esc(&e.title),
            esc(&e.what),
            esc(&e.how_long),
            esc(&e.then)
        ));
        if !e.exceptions.is_empty() {
            out.push_str("<dt>Exceptions</dt><dd><ul>\n");
            for x in &e.exceptions {
                out.push_str(&format!("<li>{}</li>\n", esc(x)));
            }
            out.push_str("</ul></dd>\n");
        }
        out.push_str("</dl>\n</section>\n");
    }
    out.push_str(&format!(
        "<footer><p>Policy <code>{}</code> (SHA-256), published {}. Each enforcement run records this hash in the \
         library's audit ledger.</p></footer>\n</body>\n</html>\n",
        policy_hash(cfg),
        date.format("%Y-%m-%d")
    ));
    out
}
