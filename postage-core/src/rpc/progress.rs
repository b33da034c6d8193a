//! Progress beats of long calls, both sides of the wire.
//!
//! A caller that opts in (see [`RpcOptions::progress`](crate::RpcOptions::progress))
//! sends its call with the header `x-postage-progress` holding the beat interval it
//! wants, in milliseconds. While the handler runs, the answering side sends a *beat* to
//! the call's `reply_to` every interval, with the call's correlation id and the same
//! header (its value `"beat"`): the body is a JSON value, `null` for a plain beat, or
//! what the handler gave [`Reply::progress`](crate::Reply::progress). The answer comes as
//! ever, without the header. A call without the header, as every Python Postage caller
//! sends, is never sent a beat.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The header of a call that asks for progress beats (its value: the interval in
/// milliseconds), and of each beat (its value: `"beat"`).
pub const PROGRESS_HEADER: &str = "x-postage-progress";

/// The shortest beat interval a server keeps to, whatever a caller asks.
pub(crate) const MIN_BEAT: Duration = Duration::from_millis(20);

/// The beat interval a call asks for in its headers, `None` when it asks for none.
pub(crate) fn requested(headers: &FieldTable) -> Option<Duration> {
    let ms = match headers.inner().get(PROGRESS_HEADER)? {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        _ => return None,
    };
    let ms = u64::try_from(ms).ok()?;
    Some(Duration::from_millis(ms).max(MIN_BEAT))
}

/// `properties` of a call asking for a beat every `interval`.
pub(crate) fn ask(properties: BasicProperties, interval: Duration) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    let ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    headers.insert(PROGRESS_HEADER.into(), AMQPValue::LongLongInt(ms));
    properties.with_headers(headers)
}

/// `properties` of an answer, made those of a beat.
pub(crate) fn beat(properties: BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from(PROGRESS_HEADER),
        AMQPValue::LongString(LongString::from("beat")),
    );
    properties.with_headers(headers)
}

/// Whether a message on a reply queue is a beat rather than an answer.
pub(crate) fn is_beat(properties: &BasicProperties) -> bool {
    properties
        .headers()
        .as_ref()
        .is_some_and(|headers| headers.inner().contains_key(PROGRESS_HEADER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_asks_for_beats_and_a_beat_is_told_from_an_answer() {
        let asked = ask(BasicProperties::default(), Duration::from_millis(200));
        let headers = asked.headers().clone().unwrap();
        assert_eq!(requested(&headers), Some(Duration::from_millis(200)));
        assert_eq!(requested(&FieldTable::default()), None);
        let fast = ask(BasicProperties::default(), Duration::from_millis(1));
        assert_eq!(requested(&fast.headers().clone().unwrap()), Some(MIN_BEAT));
        assert!(is_beat(&beat(BasicProperties::default())));
        assert!(!is_beat(&BasicProperties::default()));
    }
}
