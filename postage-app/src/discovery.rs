//! The list of live components: a `describe` call to every application, collected for
//! a wait.

use std::time::Duration;

use postage_core::{Connection, Error, Producer, Result, Route, RpcResult};

use crate::addresses::DISCOVERY_EXCHANGE;
use crate::application::Description;

/// Every live postage application of the virtual host that answers within `wait`, with
/// its fingerprint, groups and handlers.
pub async fn components(connection: &Connection, wait: Duration) -> Result<Vec<Description>> {
    let producer = Producer::builder(connection)
        .reliable(true)
        .publish_timeout(wait)
        .build()
        .await?;
    let route = Route::pairs([(DISCOVERY_EXCHANGE, String::new())]);
    let ask = producer.gather("describe", serde_json::json!({}), &route, wait, None);
    let answers = match ask.await {
        // No application listens on the discovery exchange: none is running.
        Err(Error::Unroutable { .. }) => return Ok(Vec::new()),
        answers => answers?,
    };
    let mut found: Vec<Description> = answers
        .into_iter()
        .filter_map(|answer| match answer {
            RpcResult::Success { value, .. } => serde_json::from_value(value).ok(),
            _ => None,
        })
        .collect();
    found.sort_by(|a, b| {
        (&a.fingerprint.name, &a.fingerprint.host, &a.fingerprint.pid).cmp(&(
            &b.fingerprint.name,
            &b.fingerprint.host,
            &b.fingerprint.pid,
        ))
    });
    Ok(found)
}
