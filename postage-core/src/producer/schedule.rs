//! Scheduled messages: a command sent now that reaches its exchange later, held by the
//! broker in a delay queue (the mechanism of [`crate::delay`], shared with retries).
//!
//! For each exchange `X` and delay tier `T`, the broker keeps a fanout exchange and a
//! delay queue bound to it, both named `postage.scheduled.X.T` (`amq.default` stands for
//! the default exchange). A scheduled message is published to that fanout exchange with
//! its own routing key and its delay as its expiration; as its delay ends the queue
//! dead-letters it to `X` with the key it was published with, so it reaches whatever
//! queues `X` routes that key to at that moment, as if sent then.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{Producer, Publish, Route};
use crate::delay;
use crate::error::Result;
use crate::topology::{Exchange, ExchangeKind};
use crate::wire::{Category, Message};

impl Producer {
    /// Sends the command `name` with `parameters` to every default destination
    /// `delay` from now, without a plugin: the broker holds it in a delay queue meanwhile,
    /// through restarts of the sender, of the receivers and of the broker itself (a
    /// quorum queue, a persistent message). It arrives `delay` from now, to within 100 ms
    /// and the broker's own expiry rounding, except that it waits behind a message
    /// scheduled earlier into the same delay queue (same exchange, a delay within a third
    /// of its own) that is due later. A delay of zero sends it at once; one past about 46
    /// days is refused. A reliable producer returns once the broker has stored it.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use postage_core::{Connection, Exchange, Producer};
    ///
    /// const ECHO: Exchange = Exchange::new("echo-exchange");
    ///
    /// # async fn demo() -> postage_core::Result<()> {
    /// let connection = Connection::from_env().await?;
    /// let producer = Producer::builder(&connection)
    ///     .destination(ECHO, "echo-rk")
    ///     .reliable(true)
    ///     .build()
    ///     .await?;
    /// producer
    ///     .command_after(Duration::from_secs(90), "echo", "ninety seconds later")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn command_after(
        &self,
        delay: Duration,
        name: &str,
        parameters: impl Serialize,
    ) -> Result<()> {
        delay::check(delay)?;
        let body = if self.plain_json() {
            self.command_body(name, Category::Message, &parameters)?
        } else {
            let message =
                Message::command(name, parameters)?.with_fingerprint(self.fingerprint().clone());
            self.encoder().encode(&message)?
        };
        self.send_later(&body, &Route::Default, delay).await
    }

    /// Sends the command `name` with `parameters` to every default destination at `time`
    /// (this machine's clock), as [`Producer::command_after`] does; a time past sends it
    /// at once.
    ///
    /// ```no_run
    /// use std::time::{Duration, SystemTime};
    /// use postage_core::{Connection, Exchange, Producer};
    ///
    /// const ECHO: Exchange = Exchange::new("echo-exchange");
    ///
    /// # async fn demo() -> postage_core::Result<()> {
    /// let connection = Connection::from_env().await?;
    /// let producer = Producer::builder(&connection)
    ///     .destination(ECHO, "echo-rk")
    ///     .build()
    ///     .await?;
    /// let noon = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_472_000);
    /// producer.command_at(noon, "echo", "at noon").await?;
    /// # Ok(()) }
    /// ```
    pub async fn command_at(
        &self,
        time: SystemTime,
        name: &str,
        parameters: impl Serialize,
    ) -> Result<()> {
        let delay = time
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        self.command_after(delay, name, parameters).await
    }

    /// Publishes `body` along `route` through the delay queues of its exchanges, to
    /// arrive `delay` from now.
    async fn send_later(&self, body: &[u8], route: &Route, delay: Duration) -> Result<()> {
        let expiration = delay::expiration(delay);
        let properties = self
            .properties()
            .with_delivery_mode(2)
            .with_expiration(expiration);
        let tier = delay::ladder_step(delay);
        for (exchange, key) in self.resolve(route)?.iter() {
            self.ensure_declared(exchange).await?;
            if delay.is_zero() {
                let publish = Publish::new(exchange.name(), key, body, self.properties());
                self.send(publish.mandatory(self.reliable())).await?;
                continue;
            }
            let entry = self.ensure_delay_queue(exchange, tier).await?;
            let publish = Publish::new(&entry, key, body, properties.clone());
            self.send(publish.mandatory(self.reliable())).await?;
        }
        Ok(())
    }

    /// Declares (once per channel) the fanout exchange and delay queue that hold messages
    /// for `exchange` for `tier`, and returns their name.
    async fn ensure_delay_queue(&self, exchange: &Exchange, tier: Duration) -> Result<String> {
        let name = delay::scheduled_name(exchange.name(), tier);
        let known = self.inner.declared.with(|set| set.contains(&name));
        if known {
            return Ok(name);
        }
        let Some(connection) = self.connection() else {
            return Ok(name);
        };
        let entry = Exchange::named(name.clone()).kind(ExchangeKind::Fanout);
        connection.declare_exchange(&entry).await?;
        let queue = delay::queue(&name, tier, exchange.name(), None);
        connection.declare_queue(&queue).await?;
        connection.bind_queue(&name, &entry, "").await?;
        self.inner.declared.with(|set| {
            set.insert(name.clone());
        });
        Ok(name)
    }
}
