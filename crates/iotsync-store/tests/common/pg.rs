//! A schema of its own on the real PostgreSQL for one test: the store's tests and the
//! test kit (`crates/iotsync-testkit`, through `#[path]`) share this one file. The server
//! comes from `IOTSYNC_TEST_PG_URL` or `postgres://postgres@127.0.0.1:5432/test`; a
//! missing server fails the test, it never skips.

use sqlx::Connection;

pub fn pg_base_url() -> String {
    std::env::var("IOTSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Creates a fresh schema named `{prefix}_…`; returns (url with that search_path, schema).
pub async fn create_schema(prefix: &str) -> (String, String) {
    let base = pg_base_url();
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let schema = format!("{prefix}_{:x}{:x}", n, std::process::id());
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required for this test: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE SCHEMA {schema}: {e}"));
    let sep = if base.contains('?') { '&' } else { '?' };
    (
        format!("{base}{sep}options=-c%20search_path%3D{schema}"),
        schema,
    )
}

/// Drops a schema made by [`create_schema`] (best effort: the test has its verdict).
pub async fn drop_schema(schema: &str) {
    if let Ok(mut c) = sqlx::PgConnection::connect(&pg_base_url()).await {
        let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut c)
            .await;
    }
}
