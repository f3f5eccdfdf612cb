//! The ledger's hash chain: tampering with any field, deleting a run, or reordering two
//! runs is detected, in the database and offline in an exported file.

use lethe::db::Db;
use lethe::ledger::{self, chain};

use crate::common::*;
use crate::engine::run_at;

async fn three_runs(db: &TestDb) -> lethe::config::Config {
    koha_reference(db, None).await;
    patron(db, 10, 1, "2010-01-01", "PT").await;
    old_issue(db, 1, Some(10), Some("2020-01-01 10:00:00")).await;
    let cfg = db.config("");
    for _ in 0..3 {
        run_at(&cfg, now(), true).await;
    }
    cfg
}

async fn verify(cfg: &lethe::config::Config) -> Result<usize, chain::ChainBroken> {
    let ldb = Db::connect(cfg).await.unwrap();
    let entries = ledger::entries(&ldb, None).await.unwrap();
    ldb.close().await;
    chain::verify(&entries)
}

both_backends!(tampering_deleting_and_reordering_are_detected);
async fn tampering_deleting_and_reordering_are_detected(db: TestDb) {
    let cfg = three_runs(&db).await;
    assert_eq!(verify(&cfg).await, Ok(3));
    // Every field of a run and of a class row, altered one at a time.
    let run_fields = [
        "host",
        "version",
        "mode",
        "started_at",
        "finished_at",
        "status",
        "policy",
        "error",
    ];
    for f in run_fields {
        db.exec("CREATE TABLE lethe_backup AS SELECT * FROM lethe_runs")
            .await;
        db.exec(&format!("UPDATE lethe_runs SET {f} = 'x' WHERE id = 2"))
            .await;
        let err = verify(&cfg).await.unwrap_err();
        assert_eq!(err.id, 2, "{f}: {err}");
        db.exec(&format!("UPDATE lethe_runs SET {f} = (SELECT b.{f} FROM lethe_backup b WHERE b.id = 2) WHERE id = 2"))
            .await;
        db.exec("DROP TABLE lethe_backup").await;
        assert_eq!(verify(&cfg).await, Ok(3), "restored after {f}");
    }
    let class_fields = [
        "affected",
        "eligible",
        "kept_opt_in",
        "kept_obligations",
        "kept_protected",
        "batches",
    ];
    for f in class_fields {
        db.exec(&format!(
            "UPDATE lethe_run_classes SET {f} = {f} + 1 WHERE run_id = 1 AND position = 0"
        ))
        .await;
        let err = verify(&cfg).await.unwrap_err();
        assert_eq!(err.id, 1, "{f}: {err}");
        db.exec(&format!(
            "UPDATE lethe_run_classes SET {f} = {f} - 1 WHERE run_id = 1 AND position = 0"
        ))
        .await;
    }
    db.exec("UPDATE lethe_run_classes SET cutoff = '2000-01-01T00:00:00Z' WHERE run_id = 3 AND position = 2").await;
    assert_eq!(verify(&cfg).await.unwrap_err().id, 3);
    db.exec("UPDATE lethe_runs SET hash = NULL WHERE id = 3")
        .await;
    assert_eq!(verify(&cfg).await.unwrap_err().id, 3);

    // A fresh chain for deletion and reordering.
    db.exec("DELETE FROM lethe_run_classes").await;
    db.exec("DELETE FROM lethe_runs").await;
    for _ in 0..3 {
        run_at(&cfg, now(), true).await;
    }
    let ids: Vec<i64> = {
        let ldb = Db::connect(&cfg).await.unwrap();
        let e = ledger::entries(&ldb, None).await.unwrap();
        ldb.close().await;
        e.iter().map(|e| e.id).collect()
    };
    assert_eq!(verify(&cfg).await, Ok(3));
    // Reorder: the last two runs trade places in the chain.
    let swap = |x: i64, y: i64| {
        format!(
            "UPDATE lethe_runs SET hash = (SELECT b.hash FROM lethe_backup b WHERE b.id = {y}), \
             prev_hash = (SELECT b.prev_hash FROM lethe_backup b WHERE b.id = {y}) WHERE id = {x}"
        )
    };
    db.exec("CREATE TABLE lethe_backup AS SELECT * FROM lethe_runs")
        .await;
    db.exec(&swap(ids[1], ids[2])).await;
    db.exec(&swap(ids[2], ids[1])).await;
    assert_eq!(verify(&cfg).await.unwrap_err().id, ids[1]);
    db.exec(&swap(ids[1], ids[1])).await;
    db.exec(&swap(ids[2], ids[2])).await;
    db.exec("DROP TABLE lethe_backup").await;
    assert_eq!(verify(&cfg).await, Ok(3));
    // Delete the middle run.
    db.exec(&format!(
        "DELETE FROM lethe_run_classes WHERE run_id = {}",
        ids[1]
    ))
    .await;
    db.exec(&format!("DELETE FROM lethe_runs WHERE id = {}", ids[1]))
        .await;
    let err = verify(&cfg).await.unwrap_err();
    assert_eq!(err.id, ids[2], "{err}");
    assert!(err.what.contains("removed"), "{err}");
}

/// An auditor with only the export and the binary verifies the chain offline.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_verifies_offline_and_tampering_in_it_is_detected() {
    let db = TestDb::sqlite().await;
    let cfg = three_runs(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("retention.yaml");
    std::fs::write(
        &yaml,
        format!(
            "database:\n  url: \"{}\"\nschedule:\n  cron: \"30 2 * * *\"\n  timezone: America/New_York\nprofile: koha\n",
            db.url
        ),
    )
    .unwrap();
    let _ = cfg;
    let lethe = env!("CARGO_BIN_EXE_lethe");
    let out = std::process::Command::new(lethe)
        .args([
            "--config",
            yaml.to_str().unwrap(),
            "ledger",
            "export",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let file = dir.path().join("ledger.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let verify_file = |p: &std::path::Path| {
        // No config and no database: only the file.
        std::process::Command::new(lethe)
            .current_dir(dir.path())
            .args([
                "--config",
                "/nonexistent.yaml",
                "ledger",
                "verify",
                "--file",
                p.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let ok = verify_file(&file);
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("3 entries verified"));
    // Each run's policy and counts are readable in the file itself.
    let x: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        x["entries"][0]["policy"]
            .as_str()
            .unwrap()
            .contains("circulation_history")
    );
    assert!(x["entries"][0]["classes"][0]["affected"].is_i64());

    let tampered = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = x.clone();
        f(&mut v);
        let p = dir.path().join("tampered.json");
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let o = verify_file(&p);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, msg) =
        tampered(&|v| v["entries"][1]["classes"][0]["affected"] = serde_json::json!(999));
    assert_eq!(code, Some(1));
    assert!(msg.contains("entry 2") && msg.contains("altered"), "{msg}");
    let (code, msg) = tampered(&|v| {
        v["entries"].as_array_mut().unwrap().remove(1);
    });
    assert_eq!(code, Some(1));
    assert!(msg.contains("removed"), "{msg}");
    let (code, msg) = tampered(&|v| v["entries"].as_array_mut().unwrap().swap(1, 2));
    assert_eq!(code, Some(1));
    assert!(
        msg.contains("reordered") || msg.contains("out of order"),
        "{msg}"
    );
    let (code, _) = tampered(&|v| v["entries"][0]["policy"] = serde_json::json!("{}"));
    assert_eq!(code, Some(1));
    let (code, _) = tampered(&|v| {
        v["entries"].as_array_mut().unwrap().remove(0);
    });
    assert_eq!(
        code,
        Some(1),
        "a complete export must start at the first entry"
    );
}

both_backends!(a_policy_change_between_runs_is_an_entry_of_the_chain);
async fn a_policy_change_between_runs_is_an_entry_of_the_chain(db: TestDb) {
    let cfg = three_runs(&db).await;
    // Three runs with one policy: no change entries.
    assert_eq!(db.count("lethe_runs WHERE kind = 'config-change'").await, 0);
    let changed = db.config("classes:\n  circulation_history:\n    retain: 60 days\n");
    let r = run_at(&changed, now(), true).await;
    assert!(
        r.notices.iter().any(|n| n.contains("policy changed")),
        "{:?}",
        r.notices
    );
    let ldb = Db::connect(&cfg).await.unwrap();
    let entries = ledger::entries(&ldb, None).await.unwrap();
    ldb.close().await;
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["run", "run", "run", "config-change", "run"]);
    let change = &entries[3];
    assert_eq!(change.policy_sha256, entries[4].policy_sha256);
    assert_ne!(change.policy_sha256, entries[2].policy_sha256);
    assert!(change.policy.contains("60 days"));
    assert_eq!(chain::verify(&entries), Ok(5));
    // The same policy again: no new change entry.
    run_at(&changed, now(), true).await;
    assert_eq!(db.count("lethe_runs WHERE kind = 'config-change'").await, 1);
    // Hiding the change is detected.
    db.exec("UPDATE lethe_runs SET kind = 'run' WHERE kind = 'config-change'")
        .await;
    assert_eq!(verify(&cfg).await.unwrap_err().id, change.id);
}
