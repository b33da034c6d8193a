//! What a consumer wants on the broker and how it gets it back: its channel and prefetch,
//! its exchanges, queues and bindings (run-time ones included), and one consumer per
//! queue it reads, reconciled by the connection's supervisor after every reconnection
//! and every loss of its channel or of one of its consumers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::mpsc;

use super::Delivery;
use super::delivery::Held;
use crate::connection::supervisor::{Member, Reconciling};
use crate::connection::{ChannelLease, Connection, LiveChannel};
use crate::error::{Error, Result};
use crate::sync::Locked;
use crate::telemetry::Watched;
use crate::topology::{Binding, Exchange, Queue};
use crate::wire::Encoder;

/// The deliveries of one queue.
pub(super) type Deliveries = std::pin::Pin<Box<dyn Stream<Item = Delivery> + Send + Sync>>;

/// A consumer's wanted state and its live channel, shared by the [`Consumer`]
/// (super::Consumer), its handles and its keeper.
#[derive(Debug)]
pub(super) struct Engine {
    pub(super) connection: Connection,
    /// Asked for as `x-consumer-timeout` on each quorum queue read.
    delivery_timeout: Option<Duration>,
    /// The live channel, replaced by each reconciliation.
    live: LiveChannel<Arc<ChannelLease>>,
    pub(super) encoder: Arc<dyn Encoder>,
    /// What was bound, as declared, with each queue's actual name: replayed on recovery.
    bindings: Locked<Vec<Bound>>,
    /// The queues to read (`None` before `start` and after `stop`), each with the tag of
    /// its consumer on the live channel (`None` until it runs there).
    consuming: Locked<Option<BTreeMap<String, Option<String>>>>,
    /// Held by whatever changes what runs on the channel (a reconciliation, a consume, a
    /// cancel), so no two of them ever start a second consumer of one queue.
    changing: tokio::sync::Mutex<()>,
    /// Hands each new queue's stream to the [`Consumer`](super::Consumer).
    streams: mpsc::UnboundedSender<Deliveries>,
    /// Per queue, its deliveries and streams not yet dropped.
    held: Locked<HashMap<String, Arc<AtomicUsize>>>,
}

/// A binding and the name its queue has on the broker (the broker's choice when the
/// queue was declared without one).
#[derive(Debug, Clone)]
struct Bound {
    binding: Binding,
    queue_name: String,
}

impl Engine {
    /// Opens the channel, sets its prefetch, and has the connection's supervisor keep
    /// the engine reconciled from now on.
    pub(super) async fn start(
        connection: &Connection,
        prefetch: u16,
        delivery_timeout: Option<Duration>,
        encoder: Arc<dyn Encoder>,
        streams: mpsc::UnboundedSender<Deliveries>,
    ) -> Result<Arc<Self>> {
        let live = LiveChannel::open({
            let connection = connection.clone();
            move || open(connection.clone(), prefetch)
        })
        .await?;
        let engine = Arc::new(Self {
            connection: connection.clone(),
            delivery_timeout,
            live,
            encoder,
            bindings: Locked::new(Vec::new()),
            consuming: Locked::new(None),
            changing: tokio::sync::Mutex::new(()),
            streams,
            held: Locked::new(HashMap::new()),
        });
        LiveChannel::kept(&engine, connection.watch_generation(), |engine: &Self| {
            Some(&engine.live)
        });
        if let Some(telemetry) = connection.telemetry() {
            let watched: Arc<dyn Watched> = Arc::clone(&engine) as _;
            telemetry.watch(Arc::downgrade(&watched));
        }
        Ok(engine)
    }

    pub(super) fn live_lease(&self) -> Arc<ChannelLease> {
        self.live.current()
    }

    /// Declares and binds, remembers the binding, and reads the queue when consuming.
    pub(super) async fn bind(
        self: &Arc<Self>,
        exchange: &Exchange,
        queue: &Queue,
        routing_key: &str,
    ) -> Result<String> {
        queue.warn_if_dropping();
        let name =
            declare_and_bind(&self.connection, exchange, queue, queue.name(), routing_key).await?;
        let binding = Binding {
            exchange: exchange.clone(),
            queue: queue.clone(),
            routing_key: routing_key.to_owned(),
        };
        self.bindings.with(|bindings| {
            if !bindings
                .iter()
                .any(|b| b.binding == binding && b.queue_name == name)
            {
                bindings.push(Bound {
                    binding,
                    queue_name: name.clone(),
                });
            }
        });
        let consuming = self.consuming.with(|c| c.is_some());
        if consuming {
            self.consume(&name).await?;
        }
        Ok(name)
    }

    /// Removes a binding now, and from what is restored.
    pub(super) async fn unbind(
        &self,
        exchange: &Exchange,
        queue: &str,
        routing_key: &str,
    ) -> Result<()> {
        self.connection
            .unbind_queue(queue, exchange, routing_key)
            .await?;
        self.bindings.with(|bindings| {
            bindings.retain(|b| {
                !(b.binding.exchange.name() == exchange.name()
                    && b.queue_name == queue
                    && b.binding.routing_key == routing_key)
            });
        });
        Ok(())
    }

    /// The bindings made, in order, each queue under its actual name.
    pub(super) fn bindings(&self) -> Vec<Binding> {
        self.bindings.with(|bound| {
            bound
                .iter()
                .map(|b| Binding {
                    queue: b.binding.queue.renamed(&b.queue_name),
                    ..b.binding.clone()
                })
                .collect()
        })
    }

    /// Reads every bound queue from now on.
    pub(super) async fn start_consuming(self: &Arc<Self>) -> Result<()> {
        self.consuming.with(|consuming| {
            consuming.get_or_insert_with(BTreeMap::new);
        });
        let mut queues: Vec<String> = Vec::new();
        for binding in self.bindings() {
            if !queues.iter().any(|q| q == binding.queue.name()) {
                queues.push(binding.queue.name().to_owned());
            }
        }
        for queue in queues {
            self.consume(&queue).await?;
        }
        Ok(())
    }

    /// Reads `queue` from now on, unless it is read already.
    async fn consume(self: &Arc<Self>, queue: &str) -> Result<()> {
        let _changing = self.changing.lock().await;
        let wanted = self.consuming.with(|c| {
            let Some(queues) = c.as_mut() else {
                return false;
            };
            queues.entry(queue.to_owned()).or_insert(None).is_none()
        });
        if wanted {
            self.consume_on(&self.live_lease(), queue).await?;
        }
        Ok(())
    }

    /// Starts the consumer of `queue` on `lease` and hands its stream over. Called with
    /// `changing` held.
    async fn consume_on(self: &Arc<Self>, lease: &Arc<ChannelLease>, queue: &str) -> Result<()> {
        let operation = || format!("consuming queue {queue:?}");
        let consuming = async {
            lease
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    self.consume_arguments(queue),
                )
                .await
                .map_err(Error::amqp(operation()))
        };
        let stream = self.connection.bounded(operation, consuming).await?;
        let tag = stream.tag().to_string();
        self.consuming.with(|consuming| {
            if let Some(queues) = consuming.as_mut() {
                queues.insert(queue.to_owned(), Some(tag.clone()));
            }
        });
        let encoder = Arc::clone(&self.encoder);
        let held = self.held_count(queue);
        // The stream counts as held until it is dropped: deliveries received before a
        // cancel may wait in it.
        let stream_held = Held::new(&held);
        let queue: Arc<str> = Arc::from(queue);
        let queue_name = Arc::clone(&queue);
        let ending = Ending {
            engine: Arc::downgrade(self),
            queue: Arc::clone(&queue),
            tag,
            lease: Arc::clone(lease),
        };
        let lease = Arc::clone(lease);
        let deliveries = stream
            .take_while(move |next| {
                // A lost channel ends the stream: the reconciliation starts a new one.
                if let Err(error) = next {
                    tracing::debug!(queue = %queue_name, %error, "consumer stream failed");
                }
                std::future::ready(next.is_ok())
            })
            .filter_map(move |next| {
                let _stream = &stream_held;
                std::future::ready(next.ok().map(|inner| Delivery {
                    inner: Arc::new(inner),
                    queue: Arc::clone(&queue),
                    encoder: Arc::clone(&encoder),
                    channel: Arc::clone(&lease),
                    _held: Held::new(&held),
                }))
            })
            .chain(
                futures_util::stream::once(async move { ending.report() })
                    .filter_map(|()| std::future::ready(None)),
            );
        // The consumer is gone when the send fails: nobody reads this queue any more.
        let _ = self.streams.send(Box::pin(deliveries));
        Ok(())
    }

    /// The arguments of `basic.consume` for `queue`: `x-consumer-timeout` on a quorum
    /// queue when a delivery timeout is wanted (RabbitMQ 4.3 refuses it on classic ones).
    fn consume_arguments(&self, queue: &str) -> FieldTable {
        let mut arguments = FieldTable::default();
        let quorum = self.bindings.with(|bindings| {
            bindings
                .iter()
                .any(|b| b.queue_name == queue && b.binding.queue.is_quorum())
        });
        if let Some(timeout) = self.delivery_timeout.filter(|_| quorum) {
            let millis = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
            arguments.insert("x-consumer-timeout".into(), AMQPValue::LongLongInt(millis));
        }
        arguments
    }

    /// Stops reading `queue`, leaving its bindings.
    pub(super) async fn stop_consuming(&self, queue: &str) -> Result<()> {
        let _changing = self.changing.lock().await;
        let tag = self
            .consuming
            .with(|c| c.as_mut().and_then(|queues| queues.remove(queue)))
            .flatten();
        match tag {
            Some(tag) => self.cancel(&tag).await,
            None => Ok(()),
        }
    }

    /// The count of `queue`'s deliveries and streams not yet dropped.
    fn held_count(&self, queue: &str) -> Arc<AtomicUsize> {
        self.held
            .with(|held| Arc::clone(held.entry(queue.to_owned()).or_default()))
    }

    /// How many of `queue`'s deliveries (and streams) are not yet dropped: 0 once a queue
    /// no longer read has nothing left in the consumer.
    pub(super) fn held(&self, queue: &str) -> usize {
        self.held_count(queue).load(Ordering::SeqCst)
    }

    /// Forgets the consumers without cancelling them (their channel is about to close):
    /// nothing restores them.
    pub(super) fn forget_consumers(&self) {
        self.consuming.with(Option::take);
    }

    /// Stops reading every queue.
    pub(super) async fn stop(&self) -> Result<()> {
        let _changing = self.changing.lock().await;
        let queues = self.consuming.with(Option::take).unwrap_or_default();
        for tag in queues.into_values().flatten() {
            self.cancel(&tag).await?;
        }
        Ok(())
    }

    /// Cancels the consumer `tag`; one whose channel is down has nothing to cancel.
    async fn cancel(&self, tag: &str) -> Result<()> {
        let channel = self.live_lease();
        let operation = || format!("cancelling consumer {tag:?}");
        let cancelling = async {
            channel
                .basic_cancel(tag.into(), BasicCancelOptions::default())
                .await
                .map_err(Error::amqp(operation()))
        };
        match self.connection.bounded(operation, cancelling).await {
            Err(error) if !channel.status().connected() => {
                tracing::debug!(%error, "consumer already gone with its channel");
                Ok(())
            }
            other => other,
        }
    }

    /// The queues being read now, by name.
    pub(super) fn consumed_queues(&self) -> Vec<String> {
        self.consuming
            .with(|c| c.as_ref().map(|q| q.keys().cloned().collect()))
            .unwrap_or_default()
    }

    /// Restores everything on a new channel, from whatever state the last attempt left:
    /// QoS, exchanges, queues (server-named ones under new names), bindings, and one
    /// consumer for each queue that is read. The channel it replaces is closed, and with
    /// it any consumer still on it, so none stacks.
    async fn restore(self: &Arc<Self>) -> Result<()> {
        let _changing = self.changing.lock().await;
        let (lease, old) = self.live.replaced().await?;
        self.consuming.with(|consuming| {
            if let Some(queues) = consuming.as_mut() {
                queues.values_mut().for_each(|tag| *tag = None);
            }
        });
        // Still open when only a consumer was cancelled: its other consumers would stack
        // on those started below, and its unacknowledged deliveries go back to the queues.
        if old.status().connected() {
            let closing = old.close(200, "postage: consumer moved to a new channel".into());
            let _ = tokio::time::timeout(self.connection.config().operation_timeout, closing).await;
        }
        let bound = self.bindings.with(|b| b.clone());
        let mut renamed: HashMap<String, String> = HashMap::new();
        for Bound {
            binding,
            queue_name,
        } in bound
        {
            // A server-named queue cannot be declared again under its old `amq.gen-` name.
            let wanted = if binding.queue.name().is_empty() {
                renamed.get(&queue_name).cloned().unwrap_or_default()
            } else {
                queue_name.clone()
            };
            let name = declare_and_bind(
                &self.connection,
                &binding.exchange,
                &binding.queue,
                &wanted,
                &binding.routing_key,
            )
            .await?;
            if name != queue_name {
                self.rename(&queue_name, &name);
            }
            renamed.insert(queue_name, name);
        }
        let unread: Vec<String> = self
            .consuming
            .with(|c| {
                c.as_ref().map(|q| {
                    q.iter()
                        .filter(|(_, t)| t.is_none())
                        .map(|(q, _)| q.clone())
                        .collect()
                })
            })
            .unwrap_or_default();
        for queue in unread {
            self.consume_on(&lease, &queue).await?;
        }
        Ok(())
    }

    /// Records that the queue declared as `old` is `new` on the broker now.
    fn rename(&self, old: &str, new: &str) {
        self.bindings.with(|bindings| {
            for bound in bindings.iter_mut().filter(|b| b.queue_name == old) {
                bound.queue_name = new.to_owned();
            }
        });
        self.consuming.with(|consuming| {
            if let Some(queues) = consuming.as_mut()
                && queues.remove(old).is_some()
            {
                queues.insert(new.to_owned(), None);
            }
        });
    }
}

impl Member for Engine {
    fn describe(&self) -> String {
        format!("consumer of queues {:?}", self.consumed_queues())
    }

    fn reconcile(self: Arc<Self>) -> Reconciling {
        Box::pin(async move { self.restore().await })
    }
}

/// What a queue's stream knows to report its end.
struct Ending {
    engine: Weak<Engine>,
    queue: Arc<str>,
    tag: String,
    lease: Arc<ChannelLease>,
}

impl Ending {
    /// Tells the keeper when the stream ended by no doing of ours: not cancelled by `stop`
    /// or `stop_consuming` (the queue would no longer be read under this tag), nor lost
    /// with the connection (its re-establishment restores everything).
    fn report(self) {
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let current = engine
            .consuming
            .with(|c| c.as_ref()?.get(&*self.queue).cloned().flatten());
        if current.as_deref() != Some(self.tag.as_str())
            || !engine.connection.lapin().status().connected()
        {
            return;
        }
        let why = if self.lease.status().connected() {
            "the broker cancelled the consumer (queue deleted?)"
        } else {
            "the broker closed the channel"
        };
        tracing::warn!(queue = %self.queue, why, "consumer lost; recovering it on a new channel");
        engine.live.lost(self.lease.serial());
    }
}

/// Opens a consumer channel with its prefetch.
async fn open(connection: Connection, prefetch: u16) -> Result<Arc<ChannelLease>> {
    let channel = connection.lease_channel().await?;
    let operation = || format!("setting prefetch {prefetch}");
    connection
        .bounded(operation, async {
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(Error::amqp(operation()))
        })
        .await?;
    Ok(Arc::new(channel))
}

/// Declares `exchange` and `queue` (under `name`; empty for a server-named one) and binds
/// them, on the connection's declaration channel; returns the queue's actual name.
async fn declare_and_bind(
    connection: &Connection,
    exchange: &Exchange,
    queue: &Queue,
    name: &str,
    routing_key: &str,
) -> Result<String> {
    connection.declare_exchange(exchange).await?;
    let name = connection.declare_queue(&queue.renamed(name)).await?;
    // The default exchange reaches every queue by its name and takes no bindings.
    if exchange.name().is_empty() {
        if !routing_key.is_empty() && routing_key != name {
            return Err(Error::config(
                "routing_key",
                format!(
                    "the default exchange reaches queue {name:?} only by its own name, not {routing_key:?}"
                ),
            ));
        }
        return Ok(name);
    }
    connection.bind_queue(&name, exchange, routing_key).await?;
    Ok(name)
}

/// A consumer is ready while it reads every queue it should, on a live channel; one not
/// started, or stopped, does not count.
impl Watched for Engine {
    fn readiness(&self) -> Option<Result<(), String>> {
        // The queues and whether each runs, read under the lock; the channel after it.
        let (waiting, names) = self.consuming.with(|consuming| {
            let queues = consuming.as_ref()?;
            let waiting: Vec<String> = queues
                .iter()
                .filter(|(_, tag)| tag.is_none())
                .map(|(queue, _)| queue.clone())
                .collect();
            Some((waiting, queues.keys().cloned().collect::<Vec<String>>()))
        })?;
        if !waiting.is_empty() {
            return Some(Err(format!("not consuming queues {waiting:?}")));
        }
        if !names.is_empty() && !self.live_lease().status().connected() {
            return Some(Err(format!("the channel of queues {names:?} is down")));
        }
        Some(Ok(()))
    }
}
