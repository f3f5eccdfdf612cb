//! The consent check of `lethe check`: library-system settings that work against
//! opt-in, each reported with how many patrons it concerns and never who; warnings
//! unless `--strict`.

use std::process::Command;

use lethe::consent;
use lethe::db::Db;

use crate::common::*;
use crate::evergreen::{eg_config, evergreen_db};

const LETHE: &str = env!("CARGO_BIN_EXE_lethe");

both_backends!(koha_categories_that_keep_history_by_default_are_reported);
async fn koha_categories_that_keep_history_by_default_are_reported(db: TestDb) {
    koha_reference(&db, None).await;
    db.exec("UPDATE categories SET default_privacy = 'forever' WHERE categorycode = 'CH'")
        .await;
    // Patron numbers that would stand out in any output.
    for n in [77_001, 77_002, 77_003] {
        patron(&db, n, 0, "2099-01-01", "CH").await;
    }
    patron(&db, 77_004, 2, "2099-01-01", "PT").await;
    let cfg = db.config("");
    let d = Db::connect(&cfg).await.unwrap();
    let p = lethe::engine::prepare(&cfg, &d).await.unwrap();
    let findings = consent::check(&cfg, &d, p.anonymous_patron).await.unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].check, "koha.default_privacy_forever");
    assert_eq!(findings[0].patrons, 3);
    assert!(
        !findings[0].message.contains("77"),
        "{}",
        findings[0].message
    );
    // AnonymousPatron emptied: the privacy-2 patron is reported too.
    db.exec("UPDATE systempreferences SET value = '' WHERE variable = 'AnonymousPatron'")
        .await;
    let p = lethe::engine::prepare(&cfg, &d).await.unwrap();
    let findings = consent::check(&cfg, &d, p.anonymous_patron).await.unwrap();
    let never = findings
        .iter()
        .find(|f| f.check == "koha.never_without_anonymous_patron")
        .unwrap();
    assert_eq!(never.patrons, 1);
    d.close().await;
}

/// Through the binary: warnings keep exit 0; `--strict` makes them exit 1; nothing in
/// the output names a patron.
#[tokio::test(flavor = "multi_thread")]
async fn check_strict_turns_consent_warnings_into_an_error() {
    let db = TestDb::sqlite().await;
    koha_reference(&db, None).await;
    db.exec("UPDATE categories SET default_privacy = 'forever' WHERE categorycode = 'PT'")
        .await;
    patron(&db, 88_123, 0, "2099-01-01", "PT").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("retention.yaml");
    std::fs::write(
        &cfg,
        format!(
            "library: Test\ndatabase: {{ url: \"{}\" }}\nschedule: {{ cron: \"30 2 * * *\", timezone: America/New_York }}\n\
             report: {{ outbox: outbox }}\nprofile: koha\n",
            db.url
        ),
    )
    .unwrap();
    let run = |strict: bool| {
        let mut args = vec!["--config", cfg.to_str().unwrap(), "check"];
        if strict {
            args.push("--strict");
        }
        Command::new(LETHE)
            .current_dir(dir.path())
            .args(&args)
            .env_remove("LETHE_CONFIG")
            .output()
            .unwrap()
    };
    let warn = run(false);
    let err = String::from_utf8_lossy(&warn.stderr).to_string();
    assert_eq!(warn.status.code(), Some(0), "{err}");
    assert!(err.contains("consent warning: 2 patrons"), "{err}");
    let strict = run(true);
    let err_s = String::from_utf8_lossy(&strict.stderr).to_string();
    assert_eq!(strict.status.code(), Some(1), "{err_s}");
    assert!(err_s.contains("consent error"), "{err_s}");
    for text in [
        err,
        err_s,
        String::from_utf8_lossy(&warn.stdout).to_string(),
    ] {
        assert!(
            !text.contains("88123") && !text.contains("Surname"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn evergreen_retention_ages_without_a_start_are_reported() {
    let Some(db) = evergreen_db().await else {
        return;
    };
    for id in [501, 502, 503] {
        db.insert(
            "actor.usr",
            &[
                ("id", i(id)),
                ("profile", i(2)),
                ("usrname", s(&format!("u{id}"))),
                ("passwd", s("x")),
                ("ident_type", i(1)),
                ("first_given_name", s("F")),
                ("family_name", s("L")),
                ("home_ou", i(1)),
                ("expire_date", s("2099-01-01 00:00:00+00")),
            ],
        )
        .await;
    }
    let set = |usr: i64, name: &str, value: &str| (usr, name.to_string(), value.to_string());
    for (usr, name, value) in [
        set(501, "history.circ.retention_age", "\"1 year\""),
        set(
            501,
            "history.circ.retention_start",
            "\"2026-01-01T00:00:00Z\"",
        ),
        set(502, "history.circ.retention_age", "\"6 months\""),
        set(503, "history.hold.retention_age", "\"1 year\""),
    ] {
        db.insert(
            "actor.usr_setting",
            &[("usr", i(usr)), ("name", s(&name)), ("value", s(&value))],
        )
        .await;
    }
    let cfg = eg_config(&db, "");
    let d = Db::connect(&cfg).await.unwrap();
    let p = lethe::engine::prepare(&cfg, &d).await.unwrap();
    let findings = consent::check(&cfg, &d, p.anonymous_patron).await.unwrap();
    let n = |c: &str| findings.iter().find(|f| f.check == c).map(|f| f.patrons);
    assert_eq!(n("evergreen.circ_retention_age_without_start"), Some(1));
    assert_eq!(n("evergreen.hold_retention_age_without_start"), Some(1));
    d.close().await;
}
