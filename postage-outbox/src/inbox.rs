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
