//! The SQLite and PostgreSQL migration directories are twins: migrated, both give the same
//! tables, columns (name, kind of type, nullability) and indexes. A migration added to one
//! directory and not the other, or written differently, fails here.

// Only the PostgreSQL throwaway database of the shared test support is used here.
#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Connection, Row};

/// Table → column → (kind of type, NOT NULL); and the explicitly created indexes.
#[derive(Debug, PartialEq)]
struct Schema {
    columns: BTreeMap<String, BTreeMap<String, (String, bool)>>,
    indexes: BTreeSet<String>,
}

/// A column type as a kind both databases share.
fn kind(declared: &str) -> String {
    let lower = declared.to_ascii_lowercase();
    match lower.as_str() {
        "bigint" | "integer" | "int" | "smallint" | "bigserial" => "int".into(),
        "text" | "character varying" | "varchar" => "text".into(),
        "double precision" | "real" | "double" | "float" => "float".into(),
        "blob" | "bytea" => "bytes".into(),
        "boolean" | "bool" => "bool".into(),
        _ => lower,
    }
}

async fn rows(url: &str, sql: &str) -> Vec<sqlx::any::AnyRow> {
    let mut db = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn sqlite_schema(url: &str) -> Schema {
    let mut columns = BTreeMap::new();
    let tables = rows(
        url,
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'",
    )
    .await;
    for table in tables {
        let table: String = table.get(0);
        let info = rows(
            url,
            &format!("SELECT name, type, \"notnull\", pk FROM pragma_table_info('{table}')"),
        )
        .await;
        let of_table = info
            .iter()
            .map(|c| {
                // A primary key column is NOT NULL in intent (and in PostgreSQL); SQLite reports
                // `notnull` 0 for a non-INTEGER one, a legacy quirk.
                let (not_null, key): (i64, i64) = (c.get(2), c.get(3));
                let name: String = c.get(0);
                (
                    name,
                    (kind(&c.get::<String, _>(1)), not_null != 0 || key > 0),
                )
            })
            .collect();
        columns.insert(table, of_table);
    }
    let indexes = rows(
        url,
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
    )
    .await
    .iter()
    .map(|r| r.get::<String, _>(0))
    .collect();
    Schema { columns, indexes }
}

async fn postgres_schema(url: &str) -> Schema {
    let mut columns: BTreeMap<String, BTreeMap<String, (String, bool)>> = BTreeMap::new();
    let found = rows(
        url,
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
         FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .await;
    for c in found {
        let nullable: String = c.get(3);
        columns
            .entry(c.get(0))
            .or_default()
            .insert(c.get(1), (kind(&c.get::<String, _>(2)), nullable == "NO"));
    }
    // Primary keys and UNIQUE constraints make indexes of their own (`…_pkey`, `…_key`), as
    // SQLite's automatic ones, which the SQLite side leaves out too.
    let indexes = rows(
        url,
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' \
         AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key' \
         AND tablename <> '_sqlx_migrations'",
    )
    .await
    .iter()
    .map(|r| r.get::<String, _>(0))
    .collect();
    Schema { columns, indexes }
}

#[tokio::test]
async fn sqlite_and_postgres_migrations_give_the_same_schema() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    walle_cloud::store::Db::connect(&sqlite_url)
        .await
        .unwrap()
        .close()
        .await;
    let postgres = common::Backend::postgres().await;
    let postgres_url = postgres.database_url().unwrap();
    walle_cloud::store::Db::connect(&postgres_url)
        .await
        .unwrap()
        .close()
        .await;
    let (lite, pg) = (
        sqlite_schema(&sqlite_url).await,
        postgres_schema(&postgres_url).await,
    );
    assert!(lite.columns.len() > 10, "{lite:?}");
    let tables: BTreeSet<&String> = lite.columns.keys().chain(pg.columns.keys()).collect();
    let mut drift = Vec::new();
    for table in tables {
        let (a, b) = (lite.columns.get(table), pg.columns.get(table));
        if a != b {
            drift.push(format!(
                "table {table}:\n  sqlite   {a:?}\n  postgres {b:?}"
            ));
        }
    }
    for index in lite.indexes.symmetric_difference(&pg.indexes) {
        let side = if lite.indexes.contains(index) {
            "sqlite"
        } else {
            "postgres"
        };
        drift.push(format!("index {index} only in {side}"));
    }
    assert!(
        drift.is_empty(),
        "the migration twins drifted:\n{}",
        drift.join("\n")
    );
}
