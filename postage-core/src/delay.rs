//! Delay queues: the broker holds a message for a while, then dead-letters it on. The one
//! mechanism behind retries with backoff (a failed message waits, then goes back to its
//! queue) and scheduled messages (a command waits, then goes to the exchange it is
//! addressed to); no plugin, any RabbitMQ from 3.10 on.
//!
//! A delay queue is a quorum queue with a message TTL, its *tier*, that dead-letters at
//! least once: a message whose wait ends while its destination cannot take it (a node
//! down, a policy refusing it) stays in the delay queue and is offered again, instead of
//! dropped; and being a quorum queue, it keeps its messages through a broker restart. A
//! message carries its own delay as its per-message expiration (at most the tier), so a
//! delay is kept to the millisecond, and a queue expires messages from its head only: a
//! message waits behind an earlier one of its queue that is due later, by at most the
//! width of the tier (delays of one size never do). Tiers are the steps of a fixed
//! [`LADDER`], so however many delays are asked for, the queues are few. Delay queues
//! have no queue TTL (`x-expires`): a quorum queue's is renewed by consumers only, not by
//! declaring it again (rabbitmq-server#5894), and would delete the queue with the
//! messages waiting in it.

use std::time::Duration;

use lapin::types::{LongString, ShortString};

use crate::error::{Error, Result};
use crate::topology::Queue;

/// The steps of a decade of delay tiers, in hundredths of a power of ten: each at most a
/// third above the one before.
const LADDER: [u64; 10] = [100, 120, 150, 200, 250, 300, 400, 500, 600, 800];

/// The longest delay a delay queue takes: RabbitMQ refuses a message TTL past
/// 2^32 - 1 ms, and the ladder's last step below it is 4 000 000 s (about 46 days).
pub(crate) const MAX_DELAY: Duration = Duration::from_millis(4_000_000_000);

/// The step of the delay ladder at or above `delay` (10 ms at least).
pub(crate) fn ladder_step(delay: Duration) -> Duration {
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

/// A tier as it appears in a delay queue's name: `1s`, `1500ms`, `2m`.
pub(crate) fn tier_name(tier: Duration) -> String {
    let ms = tier.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The prefix of the fanout exchanges and delay queues holding messages scheduled for
/// `exchange` (`amq.default` stands for the default exchange): `postage.scheduled.<exchange>`.
pub(crate) fn scheduled_prefix(exchange: &str) -> String {
    let exchange = if exchange.is_empty() {
        "amq.default"
    } else {
        exchange
    };
    format!("postage.scheduled.{exchange}")
}

/// The name of the fanout exchange and delay queue holding messages for `exchange` for
/// `tier`: `postage.scheduled.<exchange>.<tier>`.
pub(crate) fn scheduled_name(exchange: &str, tier: Duration) -> String {
    format!("{}.{}", scheduled_prefix(exchange), tier_name(tier))
}

/// `delay` as a message's `expiration` property: whole milliseconds.
pub(crate) fn expiration(delay: Duration) -> ShortString {
    ShortString::from(delay.as_millis().to_string())
}

/// Checks that a delay queue can hold a message for `delay`.
pub(crate) fn check(delay: Duration) -> Result<()> {
    if delay > MAX_DELAY {
        return Err(Error::config(
            "delay",
            format!(
                "{delay:?} is longer than a delay queue holds a message ({MAX_DELAY:?}, about 46 days)"
            ),
        ));
    }
    Ok(())
}

/// The delay queue `name` of `tier`, whose messages go, as their wait ends, to
/// `exchange`: with `routing_key`, or with the key each was published with when `None`.
pub(crate) fn queue(
    name: &str,
    tier: Duration,
    exchange: &str,
    routing_key: Option<&str>,
) -> Queue {
    let ttl = i64::try_from(tier.as_millis()).unwrap_or(i64::MAX);
    let queue = Queue::new(name)
        .quorum()
        .argument("x-dead-letter-strategy", LongString::from("at-least-once"))
        .argument("x-overflow", LongString::from("reject-publish"))
        .argument("x-message-ttl", ttl)
        .argument("x-dead-letter-exchange", LongString::from(exchange));
    match routing_key {
        Some(key) => queue.argument("x-dead-letter-routing-key", LongString::from(key)),
        None => queue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_waits_in_the_ladder_step_at_or_above_it() {
        let tier = |ms| ladder_step(Duration::from_millis(ms)).as_millis();
        assert_eq!(tier(1500), 1500);
        assert_eq!(tier(1501), 2000);
        assert_eq!(tier(700), 800);
        assert_eq!(tier(3), 10);
        assert_eq!(tier(100), 100);
        assert_eq!(tier(37_000), 40_000);
        assert_eq!(tier(3_600_000), 4_000_000);
        assert_eq!(tier(86_400_000), 100_000_000);
        assert_eq!(ladder_step(MAX_DELAY), MAX_DELAY);
        assert!(u32::try_from(MAX_DELAY.as_millis()).is_ok());
        assert_eq!(tier_name(Duration::from_millis(1500)), "1500ms");
        assert_eq!(tier_name(Duration::from_secs(120)), "2m");
        assert_eq!(tier_name(Duration::from_secs(4000)), "4000s");
    }

    #[test]
    fn a_delay_past_what_a_queue_holds_is_refused() {
        assert!(check(MAX_DELAY).is_ok());
        assert!(check(MAX_DELAY + Duration::from_millis(1)).is_err());
    }
}
