//! Legal holds: an open hold keeps every row of its patron in every class with a patron
//! column (kept.legal_hold), whatever the patron's privacy choice; placing and releasing
//! it are entries of the ledger's hash chain that name the hold and the case, never the
//! patron; after release the next run applies the policy.

use lethe::db::Db;
use lethe::ledger::{self, chain};
use lethe::legal_hold;

use crate::common::*;
use crate::engine::{class, run_at};

both_backends!(a_legal_hold_keeps_the_patrons_rows_until_released);
async fn a_legal_hold_keeps_the_patrons_rows_until_released(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 10, 1, "2099-01-01", "PT").await;
    patron(&db, 12, 2, "2099-01-01", "PT").await; // "never keep": held all the same
    patron(&db, 13, 1, "2020-01-01", "PT").await; // expired long ago: held
    old_issue(&db, 101, Some(10), Some("2026-01-01 10:00:00")).await;
    old_issue(&db, 102, Some(12), Some("2026-06-14 10:00:00")).await;
    old_issue(&db, 103, Some(13), Some("2026-01-01 10:00:00")).await;
    let cfg = db.config("");
    let pool = Db::connect(&cfg).await.unwrap();
    let (h12, _) = legal_hold::place(&pool, 12, "NY-SUP-2026-00417", None, "clerk")
        .await
        .unwrap();
    let (h13, _) = legal_hold::place(&pool, 13, "GJ 26-118", None, "clerk")
        .await
        .unwrap();
    assert!(matches!(
        legal_hold::place(&pool, 10, "", None, "clerk").await,
        Err(legal_hold::HoldError::CaseRef)
    ));

    let run = run_at(&cfg, now(), true).await;
    let c = class(&run, "circulation_history");
    assert_eq!((c.affected, c.kept.legal_hold), (1, 2), "{c:?}");
    let p = class(&run, "expired_patrons");
    assert_eq!((p.affected, p.kept.legal_hold), (0, 1), "{p:?}");
    assert_eq!(
        db.int("SELECT borrowernumber FROM old_issues WHERE issue_id = 102")
            .await,
        Some(12)
    );
    assert_eq!(db.count("borrowers WHERE borrowernumber = 13").await, 1);

    // The chain holds both events, without the patron ids, and verifies.
    let entries = ledger::entries(&pool, None).await.unwrap();
    let holds: Vec<_> = entries.iter().filter(|e| e.kind == "legal-hold").collect();
    assert_eq!(holds.len(), 2);
    assert_eq!(holds[0].status, "placed");
    let ev = holds[0].event.as_deref().unwrap();
    assert!(
        ev.contains("NY-SUP-2026-00417") && ev.contains(&format!("\"hold\":{h12}")),
        "{ev}"
    );
    for e in &holds {
        let text = serde_json::to_string(e).unwrap();
        assert!(!text.contains("\"patron\""), "{text}");
    }
    assert!(chain::verify(&entries).is_ok());
    // The holds do not read as a change of policy.
    assert_eq!(
        entries.iter().filter(|e| e.kind == "config-change").count(),
        0
    );

    assert!(matches!(
        legal_hold::release(&pool, 999, "clerk").await,
        Err(legal_hold::HoldError::NotOpen(999))
    ));
    legal_hold::release(&pool, h12, "clerk").await.unwrap();
    legal_hold::release(&pool, h13, "auditor").await.unwrap();
    assert!(legal_hold::list(&pool, false).await.unwrap().is_empty());
    assert_eq!(legal_hold::list(&pool, true).await.unwrap().len(), 2);
    let run = run_at(&cfg, now(), true).await;
    assert_eq!(class(&run, "circulation_history").affected, 2);
    assert_eq!(class(&run, "expired_patrons").affected, 1);
    let entries = ledger::entries(&pool, None).await.unwrap();
    assert_eq!(entries.iter().filter(|e| e.kind == "legal-hold").count(), 4);
    assert!(chain::verify(&entries).is_ok());
    pool.close().await;
}

both_backends!(a_legal_hold_with_an_end_date_lapses_at_the_first_run_after_it);
/// `--until`: the hold stands through its last day (the library's local date) and the
/// first enforcing run after it releases it, with a `lapsed` ledger entry, then applies
/// the policy to the patron's rows in that same run. Who placed it is recorded.
async fn a_legal_hold_with_an_end_date_lapses_at_the_first_run_after_it(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 12, 1, "2099-01-01", "PT").await;
    old_issue(&db, 102, Some(12), Some("2026-01-01 10:00:00")).await;
    let cfg = db.config("");
    let pool = Db::connect(&cfg).await.unwrap();
    // now() is 2026-06-15 08:00 in New York: a hold through 2026-06-15 still stands.
    let until = chrono::NaiveDate::from_ymd_opt(2026, 6, 15).unwrap();
    let (h, _) = legal_hold::place(&pool, 12, "CASE-1", Some(until), "clerk")
        .await
        .unwrap();
    let run = run_at(&cfg, now(), true).await;
    let c = class(&run, "circulation_history");
    assert_eq!((c.affected, c.kept.legal_hold), (0, 1), "{c:?}");
    // The next morning (local 2026-06-16): lapsed, released, and the row anonymized.
    let next_day = now() + chrono::Duration::days(1);
    let run = run_at(&cfg, next_day, true).await;
    assert_eq!(class(&run, "circulation_history").affected, 1);
    let holds = legal_hold::list(&pool, true).await.unwrap();
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].id, h);
    assert_eq!(holds[0].held_until.as_deref(), Some("2026-06-15"));
    assert_eq!(holds[0].placed_by.as_deref(), Some("clerk"));
    assert_eq!(holds[0].released_by.as_deref(), Some("lethe"));
    assert!(holds[0].released_at.is_some());
    let entries = ledger::entries(&pool, None).await.unwrap();
    let events: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == "legal-hold")
        .map(|e| e.status.as_str())
        .collect();
    assert_eq!(events, ["placed", "lapsed"]);
    assert!(chain::verify(&entries).is_ok());
    pool.close().await;
}
