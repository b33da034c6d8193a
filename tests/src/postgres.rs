//! PostgreSQL databases of their own for the outbox tests and benchmark, on the server
//! `scripts/postgres.sh` starts.

use std::process::{Command, Stdio};

use postage_outbox::sqlx;

/// The URL of the server of `scripts/postgres.sh` (`POSTAGE_POSTGRES_URL`, else the
/// script is run: it starts the server if needed and prints the URL).
pub fn url() -> String {
    if let Ok(url) = std::env::var("POSTAGE_POSTGRES_URL") {
        return url;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh");
    let output = Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/postgres.sh runs");
    assert!(
        output.status.success(),
        "scripts/postgres.sh starts PostgreSQL"
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A database of a test's own on that server, named after `name` (made of letters,
/// digits and `_`); [`Database::drop_now`] drops it.
#[derive(Debug)]
pub struct Database {
    /// Its URL.
    pub url: String,
    admin: String,
    name: String,
}

impl Database {
    /// Creates it.
    pub async fn create(name: &str) -> Self {
        let admin = url();
        let name = name.replace('-', "_");
        let pool = admin_pool(&admin).await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .expect("a database of the test's own");
        pool.close().await;
        let base = admin.rsplit_once('/').expect("a URL with a database").0;
        Self {
            url: format!("{base}/{name}"),
            admin,
            name,
        }
    }

    /// Drops it, closing the connections still open to it.
    pub async fn drop_now(self) {
        let pool = admin_pool(&self.admin).await;
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&pool)
        .await;
        pool.close().await;
    }
}

async fn admin_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("PostgreSQL answers")
}
