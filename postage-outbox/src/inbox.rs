//! A [`Store`] as a processor's inbox (see `postage_core::inbox`): each handled message's
//! id recorded in the handler's own transaction.

use std::any::Any;
use std::sync::Arc;

use postage_core::__private::BoxFuture;
use postage_core::HandlerError;
use postage_core::inbox::{Inbox, Unit};

use crate::error::Error;
use crate::store::{Store, now_ms};
use crate::tx::{Shared, Tx};

impl Inbox for Store {
    fn begin(
        &self,
        message_id: String,
        handler: String,
    ) -> BoxFuture<Result<Option<Box<dyn Unit>>, HandlerError>> {
        let store = self.clone();
        Box::pin(async move {
            store.sweep_if_due();
            let tx = store.begin().await?;
            // First, so that a second copy handled at the same time waits here (on
            // PostgreSQL, on the row this inserts) until the first commits or rolls back.
            let recorded = sqlx::query(
                "INSERT INTO postage_inbox (message_id, handler, handled_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (message_id, handler) DO NOTHING",
            )
            .bind(message_id)
            .bind(handler)
            .bind(now_ms())
            .execute(&mut *tx.conn().await?)
            .await
            .map_err(Error::db("recording a message in the inbox"))?;
            if recorded.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            Ok(Some(Box::new(Open(tx)) as Box<dyn Unit>))
        })
    }
}

/// A handler's transaction, open until the processor commits it.
struct Open(Tx);

impl Unit for Open {
    fn handle(&self) -> Arc<dyn Any + Send + Sync> {
        Arc::clone(&self.0.shared) as Arc<dyn Any + Send + Sync>
    }

    fn commit(self: Box<Self>) -> BoxFuture<Result<(), HandlerError>> {
        let shared: Arc<Shared> = Arc::clone(&self.0.shared);
        Box::pin(async move { Ok(shared.commit().await?) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use postage_core::inbox::Inbox;

    use crate::Store;

    async fn store(window: Duration) -> (Store, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "postage-outbox-inbox-{}-{}.db",
            std::process::id(),
            fastrand::u64(..)
        ));
        let store = Store::builder()
            .inbox_window(window)
            .sqlite(&path)
            .await
            .unwrap();
        (store, path)
    }

    #[tokio::test]
    async fn a_message_is_recorded_only_when_its_unit_commits() {
        let (store, path) = store(Duration::from_secs(60)).await;
        let id = || "message-1".to_owned();
        // Rolled back (dropped): not recorded, so it runs again.
        let unit = Inbox::begin(&store, id(), "P::h".into()).await.unwrap();
        drop(unit.expect("a first unit"));
        let unit = Inbox::begin(&store, id(), "P::h".into()).await.unwrap();
        unit.expect("runs again after a rollback")
            .commit()
            .await
            .unwrap();
        // Committed: handled before, for this handler; another handler runs it.
        assert!(
            Inbox::begin(&store, id(), "P::h".into())
                .await
                .unwrap()
                .is_none()
        );
        let other = Inbox::begin(&store, id(), "P::other".into()).await.unwrap();
        assert!(other.is_some(), "each handler's record is its own");
        drop(other);
        assert_eq!(store.status().await.unwrap().inbox, 1);
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn records_expire_after_the_window() {
        let (store, path) = store(Duration::from_millis(1)).await;
        let unit = Inbox::begin(&store, "m".into(), "P::h".into())
            .await
            .unwrap();
        unit.unwrap().commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The next message sweeps what is older than the window (in a task of its own).
        let unit = Inbox::begin(&store, "n".into(), "P::h".into())
            .await
            .unwrap();
        unit.unwrap().commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.status().await.unwrap().inbox,
            1,
            "only the newer record"
        );
        let _ = std::fs::remove_file(path);
    }
}
