//! The list of live components: a `describe` call to every application, collected for
//! a wait.

use std::time::Duration;

use postage_core::{Connection, Error, Fingerprint, Producer, Result, Route, RpcResult};

use crate::addresses::{DISCOVERY_EXCHANGE, GENERIC_APPLICATION_EXCHANGE};
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

/// The fingerprints of every application on `hosts` that answers `ping` within `wait`:
/// Python Postage applications too, which are not bound to the discovery exchange but are
/// reached on `@H` like every GenericApplication.
pub async fn pings(
    connection: &Connection,
    hosts: &[String],
    wait: Duration,
) -> Result<Vec<Fingerprint>> {
    if hosts.is_empty() {
        return Ok(Vec::new());
    }
    let producer = Producer::builder(connection)
        .reliable(true)
        .publish_timeout(wait)
        .build()
        .await?;
    // One call a host: a host where none is bound does not hide the others' answers.
    let asked = hosts.iter().map(|host| {
        let route = Route::pairs([(GENERIC_APPLICATION_EXCHANGE, format!("@{host}"))]);
        let producer = &producer;
        async move {
            producer
                .gather("ping", serde_json::json!({}), &route, wait, None)
                .await
        }
    });
    let mut found = Vec::new();
    for answers in futures_util::future::join_all(asked).await {
        let answers = match answers {
            Err(Error::Unroutable { .. }) => continue,
            answers => answers?,
        };
        found.extend(answers.into_iter().filter_map(|answer| match answer {
            RpcResult::Success { value, .. } => serde_json::from_value(value).ok(),
            _ => None,
        }));
    }
    Ok(found)
}
