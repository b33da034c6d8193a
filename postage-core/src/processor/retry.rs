//! Retries with backoff, on the broker: a failed message waits in a delay queue of its
//! queue, whose message TTL dead-letters it back to that queue (through the default
//! exchange, so it reaches no other queue), one delay queue per delay tier so a long delay
//! never holds up a short one; once its attempts are spent it goes to the queue's
//! dead-letter queue with the last error in its headers. No plugin, any RabbitMQ from
//! 3.10 on, classic and quorum work queues alike; the body is left as it was, so a Python
//! Postage component on the same queue reads a retried message as any other.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString, ShortString};

use super::Shared;
use crate::consumer::Delivery;
use crate::error::Result;
use crate::handler::Disposition;
use crate::producer::Publish;
use crate::telemetry::span;
use crate::topology::Queue;

/// The header that counts the attempts at a message (absent: the first).
pub const ATTEMPT_HEADER: &str = "x-postage-attempt";
/// The header that says why a message was dead-lettered, or why it was retried.
pub const ERROR_HEADER: &str = "x-postage-error";

/// How long a message whose copy could not be published waits before it goes back to
/// its queue (and so comes back to the processor).
const COPY_FAILED_PAUSE: Duration = Duration::from_secs(1);

/// How a processor retries the messages its handlers fail on: with exponential backoff
/// and jitter, up to a number of attempts, then to a dead-letter queue.
///
/// Set on a processor with [`ProcessorBuilder::retry`](super::ProcessorBuilder::retry),
/// a policy makes retry the default for a failure, and keeps for each queue `Q` that
/// the processor reads:
///
/// - delay queues `Q.delay.<delay>` (`Q.delay.1s`, `Q.delay.2s`...), each with that
///   message TTL, dead-lettering back to `Q`; declared when first needed. They are
///   quorum queues that dead-letter at least once: a message whose delay ends while `Q`
///   cannot take it (its node down, a policy refusing it) stays in its delay queue, and
///   RabbitMQ offers it again every `dead_letter_worker_publisher_confirm_timeout`
///   (3 minutes by default) until `Q` takes it. They stay when unused (a queue TTL would
///   delete a quorum queue, messages and all, however recently it was declared), and
///   they are few: one per delay of the policy, and one per step of a fixed ladder
///   (10, 12, 15, 20, 25, 30, 40, 50, 60, 80 ms times a power of ten) for the delays
///   handlers ask for;
/// - a dead-letter queue `Q.dead`, durable, for the messages whose attempts are spent,
///   that a handler rejects, or that do not decode, each with its reason in the
///   `x-postage-error` header and its attempts in `x-postage-attempt`.
///
/// Attempt `k` waits `first_delay * multiplier^(k-1)`, at most `max_delay`, less up to
/// `jitter` of it at random (so failures at one moment do not all come back at one
/// moment); a [`HandlerError::retry_after`](crate::HandlerError::retry_after) delay is
/// kept as it is. A handler's `attempts = N` overrides the policy's.
///
/// ```
/// use std::time::Duration;
/// use postage_core::RetryPolicy;
///
/// let policy = RetryPolicy::new()
///     .attempts(5)
///     .backoff(Duration::from_secs(1), Duration::from_secs(60));
/// assert_eq!(policy.delay(1), Duration::from_secs(1));
/// assert_eq!(policy.delay(3), Duration::from_secs(4));
/// assert_eq!(policy.delay(20), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    attempts: u32,
    first_delay: Duration,
    max_delay: Duration,
    multiplier: u32,
    jitter: f64,
    dead_letter_queue: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy {
    /// Three attempts, waiting 1 s then 2 s (at most 5 min), doubling, with 20 % jitter,
    /// and a dead-letter queue.
    pub fn new() -> Self {
        Self {
            attempts: 3,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            multiplier: 2,
            jitter: 0.2,
            dead_letter_queue: true,
        }
    }

    /// At most this many attempts at a message, the first included (at least 1).
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The delay before the first retry, and the longest delay.
    #[must_use]
    pub fn backoff(mut self, first_delay: Duration, max_delay: Duration) -> Self {
        self.first_delay = first_delay.max(Duration::from_millis(1));
        self.max_delay = max_delay.max(self.first_delay);
        self
    }

    /// By how much each delay grows over the one before (default 2; 1 for a fixed delay).
    #[must_use]
    pub fn multiplier(mut self, multiplier: u32) -> Self {
        self.multiplier = multiplier.max(1);
        self
    }

    /// The share of each delay taken off at random, from 0 (none) to 0.5 (default 0.2).
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 0.5);
        self
    }

    /// Whether rejected messages go to the queue's `.dead` queue (default), or are
    /// rejected to the broker (the queue's own dead-letter exchange, or dropped).
    #[must_use]
    pub fn dead_letter_queue(mut self, enabled: bool) -> Self {
        self.dead_letter_queue = enabled;
        self
    }

    /// The delay (before jitter) after attempt `attempt` failed.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .checked_pow(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.first_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    pub(super) fn keeps_dead_letters(&self) -> bool {
        self.dead_letter_queue
    }

    /// The policy's attempts, or a handler's own.
    pub(super) fn attempts_for(&self, handler: Option<u32>) -> u32 {
        handler.map_or(self.attempts, |n| n.max(1))
    }
}

/// What the processor does with a delivery whose handlers are done.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    Ack,
    /// Arrived after its deadline: acknowledged, not run.
    Expired,
    /// Rejected for good, for this reason.
    Reject(String),
    Requeue,
    /// Again later: after this delay (the policy's when `None`), for this reason, within
    /// at most this many attempts (the policy's when `None`).
    Retry {
        delay: Option<Duration>,
        attempts: Option<u32>,
        reason: String,
    },
}

impl Verdict {
    /// The verdict for a failure with disposition `disposition`.
    pub(super) fn of(disposition: Disposition, attempts: Option<u32>, reason: String) -> Self {
        match disposition {
            Disposition::Ack => Self::Ack,
            Disposition::Reject => Self::Reject(reason),
            Disposition::Requeue => Self::Requeue,
            Disposition::Retry(delay) => Self::Retry {
                delay,
                attempts,
                reason,
            },
        }
    }

    /// The verdict for a message several handlers ran on: the gravest of theirs (a
    /// rejection over a retry over a requeue over an acknowledgement); of two retries,
    /// the longer delay and the fewer attempts.
    pub(super) fn and(self, other: Self) -> Self {
        fn rank(verdict: &Verdict) -> u8 {
            match verdict {
                Verdict::Ack | Verdict::Expired => 0,
                Verdict::Requeue => 1,
                Verdict::Retry { .. } => 2,
                Verdict::Reject(_) => 3,
            }
        }
        match (self, other) {
            (
                Self::Retry {
                    delay,
                    attempts,
                    reason,
                },
                Self::Retry {
                    delay: other_delay,
                    attempts: other_attempts,
                    ..
                },
            ) => Self::Retry {
                delay: delay.max(other_delay),
                attempts: match (attempts, other_attempts) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                reason,
            },
            (one, other) if rank(&other) > rank(&one) => other,
            (one, _) => one,
        }
    }
}

/// How the broker is told: what [`Acks`](super::acks::Acks) sends for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settle {
    Ack,
    Reject,
    Requeue,
}

/// The attempt a delivery is, from its `x-postage-attempt` header.
pub(super) fn attempt_of(properties: &BasicProperties) -> u32 {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(ATTEMPT_HEADER).cloned());
    let attempt = match value {
        Some(AMQPValue::LongLongInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => i64::from(n),
        Some(AMQPValue::LongUInt(n)) => i64::from(n),
        Some(AMQPValue::ShortInt(n)) => i64::from(n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(n),
        _ => 1,
    };
    u32::try_from(attempt).unwrap_or(1).max(1)
}

/// A delay as it appears in a delay queue's name: `1s`, `1500ms`, `2m`.
fn delay_name(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl<P: Send + Sync + 'static> Shared<P> {
    /// Carries out `verdict` for `delivery`: a retry or a dead-lettering publishes a copy
    /// (and waits for the broker's confirm) before the original is acknowledged; when
    /// that copy is refused, returned as unroutable, not confirmed in time or lost with
    /// its connection, the original goes back to its queue (after [`COPY_FAILED_PAUSE`],
    /// so a broker that refuses every copy is not asked again in a tight loop), and
    /// nothing is lost.
    /// Also returns what became of the message, as spans and metrics name it.
    pub(super) async fn settle(
        &self,
        delivery: &Delivery,
        verdict: Verdict,
    ) -> (Settle, &'static str) {
        let (settle, disposition) = self.settle_as(delivery, verdict).await;
        let span = tracing::Span::current();
        span::outcome(
            &span,
            "postage.disposition",
            disposition,
            settle == Settle::Ack,
        );
        (settle, disposition)
    }

    async fn settle_as(&self, delivery: &Delivery, verdict: Verdict) -> (Settle, &'static str) {
        let attempt = attempt_of(delivery.properties());
        let queue = delivery.queue();
        let (target, reason) = match self.resolve(verdict, attempt) {
            Resolved::Ack => return (Settle::Ack, "ack"),
            Resolved::Expired => return (Settle::Ack, "expired"),
            Resolved::Requeue => return (Settle::Requeue, "requeue"),
            Resolved::Reject(reason) => {
                tracing::warn!(queue, attempt, %reason, "rejecting a message");
                return (Settle::Reject, "reject");
            }
            Resolved::Move(target, reason) => {
                if let Target::Delay { delay, .. } = target {
                    tracing::info!(queue, attempt, ?delay, %reason, "retrying a message later");
                }
                (target, reason)
            }
        };
        match self.republish(delivery, &target, attempt, &reason).await {
            Ok(()) if target == Target::Dead => {
                tracing::warn!(queue, attempt, %reason, dead_letter_queue = %format!("{queue}.dead"), "dead-lettering a message");
                (Settle::Ack, "dead-letter")
            }
            Ok(()) => (Settle::Ack, "retry"),
            Err(error) => {
                tracing::error!(queue, %error, "could not move a message to its retry or dead-letter queue; handing it back to its queue");
                tokio::time::sleep(COPY_FAILED_PAUSE).await;
                (Settle::Requeue, "requeue")
            }
        }
    }

    /// What `verdict` comes to for attempt `attempt` of a message, under the policy.
    pub(super) fn resolve(&self, verdict: Verdict, attempt: u32) -> Resolved {
        let (target, reason) = match verdict {
            Verdict::Ack => return Resolved::Ack,
            Verdict::Expired => return Resolved::Expired,
            Verdict::Requeue => return Resolved::Requeue,
            Verdict::Retry {
                delay,
                attempts,
                reason,
            } if attempt < self.retry.attempts_for(attempts) => {
                let delay = delay.unwrap_or_else(|| self.jittered(self.retry.delay(attempt)));
                let tier = delay_tier(delay, &self.retry);
                (Target::Delay { tier, delay }, reason)
            }
            Verdict::Retry { reason, .. } => (
                Target::Dead,
                format!("{reason} (attempt {attempt}, the last)"),
            ),
            Verdict::Reject(reason) => (Target::Dead, reason),
        };
        if target == Target::Dead && !self.dead_letters {
            return Resolved::Reject(reason);
        }
        Resolved::Move(target, reason)
    }

    /// `delay` less up to the policy's jitter of it, at random.
    fn jittered(&self, delay: Duration) -> Duration {
        delay.mul_f64(1.0 - self.retry.jitter * fastrand::f64())
    }

    /// Publishes a copy of `delivery` to `target` (declared first), with its attempt and
    /// `reason` in its headers.
    async fn republish(
        &self,
        delivery: &Delivery,
        target: &Target,
        attempt: u32,
        reason: &str,
    ) -> Result<()> {
        let copies = self.copies.producer().await?;
        let queue = delivery.queue();
        let (name, declared, next_attempt, expiration) = match target {
            Target::Delay { tier, delay } => {
                let name = format!("{queue}.delay.{}", delay_name(*tier));
                let ttl = i64::try_from(tier.as_millis()).unwrap_or(i64::MAX);
                // A quorum queue dead-letters at least once (it keeps a message until
                // `queue` confirms it); a classic one drops what `queue` cannot take at
                // that moment (its node down, a policy refusing it). No `x-expires`: a
                // quorum queue's TTL is renewed by consumers only, not by declaring
                // (rabbitmq-server#5894), and takes the queue's messages with it.
                let declared = Queue::new(name.as_str())
                    .quorum()
                    .argument("x-dead-letter-strategy", LongString::from("at-least-once"))
                    .argument("x-overflow", LongString::from("reject-publish"))
                    .argument("x-message-ttl", ttl)
                    .argument("x-dead-letter-exchange", LongString::from(""))
                    .argument("x-dead-letter-routing-key", LongString::from(queue));
                (
                    name,
                    declared,
                    attempt + 1,
                    Some(delay.as_millis().to_string()),
                )
            }
            Target::Dead => {
                let name = format!("{queue}.dead");
                let declared = Queue::new(name.as_str()).durable(true);
                (name, declared, attempt, None)
            }
        };
        if let Some(connection) = copies.connection() {
            connection.declare_queue(&declared).await?;
        }
        let original = delivery.properties();
        let mut headers = original.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(ATTEMPT_HEADER),
            AMQPValue::LongLongInt(i64::from(next_attempt)),
        );
        headers.insert(
            ShortString::from(ERROR_HEADER),
            AMQPValue::LongString(LongString::from(reason)),
        );
        // RabbitMQ refuses a user_id that is not the publisher's own login.
        let ours = copies.user();
        let keep_user = original
            .user_id()
            .as_ref()
            .is_some_and(|u| u.as_str() == ours);
        let mut properties = copy(original, keep_user).with_headers(headers);
        if original.message_id().is_none() {
            // Known by the id it came with wherever it goes next (an inbox's record).
            let id = crate::message_id::derive(
                delivery.body(),
                delivery.exchange(),
                delivery.routing_key(),
            );
            properties = properties.with_message_id(id.into());
        }
        if let Some(ms) = expiration {
            properties = properties.with_expiration(ShortString::from(ms));
        }
        let publish = Publish::new("", &name, delivery.body(), properties);
        copies.send(publish.mandatory(true)).await
    }
}

/// What a verdict comes to under the retry policy.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Resolved {
    Ack,
    /// Acknowledged without a run: it came after its deadline.
    Expired,
    Requeue,
    /// Rejected to the broker, for this reason.
    Reject(String),
    /// Moved to a delay or dead-letter queue, for this reason.
    Move(Target, String),
}

/// Where a message goes when it is not settled on its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// The delay queue of `tier`, to come back after `delay` (at most `tier`).
    Delay {
        tier: Duration,
        delay: Duration,
    },
    Dead,
}

/// The delay queue a delay waits in: the policy's delay at or above it, so jittered
/// delays of one attempt share a queue; a delay of its own (from `retry_after`), the
/// [`LADDER`] step at or above it, so however many delays handlers ask for, their
/// queues are few.
fn delay_tier(delay: Duration, policy: &RetryPolicy) -> Duration {
    (1..=64)
        .map(|attempt| policy.delay(attempt))
        .find(|tier| *tier >= delay)
        .filter(|tier| tier.mul_f64(1.0 - policy.jitter) <= delay)
        .unwrap_or_else(|| ladder_step(delay))
}

/// The steps of a decade of delay tiers, in hundredths of a power of ten: each at most a
/// third above the one before.
const LADDER: [u64; 10] = [100, 120, 150, 200, 250, 300, 400, 500, 600, 800];

/// The step of the delay ladder at or above `delay` (10 ms at least).
fn ladder_step(delay: Duration) -> Duration {
    let wanted = delay.as_millis();
    let mut decade: u128 = 10;
    loop {
        let step = LADDER
            .iter()
            .map(|step| u128::from(*step) * decade / 100)
            .find(|step| *step >= wanted);
        match step {
            Some(ms) => return Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)),
            None => decade *= 10,
        }
    }
}

/// The properties of `original` but its expiration and headers, and its `user_id` only
/// with `keep_user`.
fn copy(original: &BasicProperties, keep_user: bool) -> BasicProperties {
    let mut copy = BasicProperties::default();
    if let Some(v) = original.content_type() {
        copy = copy.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        copy = copy.with_content_encoding(v.clone());
    }
    if let Some(v) = original.delivery_mode() {
        copy = copy.with_delivery_mode(*v);
    }
    if let Some(v) = original.priority() {
        copy = copy.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        copy = copy.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        copy = copy.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        copy = copy.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        copy = copy.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        copy = copy.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        copy = copy.with_app_id(v.clone());
    }
    match original.user_id() {
        Some(user) if keep_user => copy.with_user_id(user.clone()),
        _ => copy,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldTable;

    use super::*;

    #[test]
    fn delays_grow_to_their_cap_and_share_queues_by_tier() {
        let policy = RetryPolicy::new().backoff(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<u64> = (1..=6).map(|a| policy.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        // A jittered delay of the second attempt waits in the 2 s queue.
        assert_eq!(
            delay_tier(Duration::from_millis(1700), &policy),
            Duration::from_secs(2)
        );
        // A delay of a handler's own waits in the ladder's queue at or above it.
        let tier = |ms| delay_tier(Duration::from_millis(ms), &policy).as_millis();
        assert_eq!(tier(1500), 1500);
        assert_eq!(tier(1501), 2000);
        assert_eq!(tier(700), 800);
        assert_eq!(tier(3), 10);
        assert_eq!(tier(37_000), 40_000);
        assert_eq!(tier(86_400_000), 100_000_000);
        assert_eq!(delay_name(Duration::from_millis(1500)), "1500ms");
        assert_eq!(delay_name(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn the_gravest_verdict_wins() {
        let retry = |delay: u64, attempts| Verdict::Retry {
            delay: Some(Duration::from_secs(delay)),
            attempts,
            reason: "busy".into(),
        };
        assert_eq!(Verdict::Ack.and(Verdict::Requeue), Verdict::Requeue);
        assert_eq!(Verdict::Requeue.and(retry(1, None)), retry(1, None));
        assert_eq!(
            retry(1, Some(5)).and(Verdict::Reject("bad".into())),
            Verdict::Reject("bad".into())
        );
        assert_eq!(retry(1, Some(5)).and(retry(3, Some(2))), retry(3, Some(2)));
    }

    #[test]
    fn the_attempt_is_read_from_its_header() {
        let mut headers = FieldTable::default();
        assert_eq!(attempt_of(&BasicProperties::default()), 1);
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(3));
        assert_eq!(
            attempt_of(&BasicProperties::default().with_headers(headers)),
            3
        );
    }
}
