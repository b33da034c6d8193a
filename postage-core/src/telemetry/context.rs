//! What crosses a hop with a message: the W3C trace context (`traceparent`, `tracestate`)
//! and a call's deadline, read from a delivery's AMQP headers and written into the headers
//! of what a handler sends, through a scope the processor keeps around each handler run.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use tokio::time::Instant;

/// The W3C Trace Context header that names the trace and the span a message was sent in.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C Trace Context header with vendor-specific trace data.
pub const TRACESTATE: &str = "tracestate";
/// The header with a request's deadline: milliseconds since the Unix epoch, after which
/// nobody waits for its answer.
pub const DEADLINE_HEADER: &str = "x-postage-deadline";

/// The W3C trace context a message came with, as its headers held it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceHeaders {
    pub(crate) traceparent: String,
    pub(crate) tracestate: Option<String>,
}

/// What a handler run carries into what it sends: the trace context its message came
/// with (passed on as it came when no OpenTelemetry layer makes spans of its own), and
/// when its work must be done.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    pub(crate) trace: Option<TraceHeaders>,
    pub(crate) deadline: Option<Instant>,
}

tokio::task_local! {
    static SCOPE: Scope;
}

impl Scope {
    /// The scope of a delivery with these headers: its trace context and its deadline.
    pub(crate) fn of(headers: Option<&FieldTable>) -> Self {
        let Some(headers) = headers else {
            return Self::default();
        };
        let trace = text(headers, TRACEPARENT).map(|traceparent| TraceHeaders {
            traceparent,
            tracestate: text(headers, TRACESTATE),
        });
        Self {
            trace,
            deadline: deadline_of(headers),
        }
    }

    /// The scope of the handler run the caller is in (an empty one outside any).
    pub(crate) fn current() -> Self {
        SCOPE.try_with(Self::clone).unwrap_or_default()
    }

    /// Runs `work` in this scope: what it sends carries the scope's context. (A plain
    /// function: an `async fn` would hold `work` twice over, and copy it when first
    /// polled.)
    pub(crate) fn run<F: Future>(self, work: F) -> tokio::task::futures::TaskLocalFuture<Scope, F> {
        SCOPE.scope(self, work)
    }

    /// This scope, its deadline brought forward to `bound` when that comes first.
    pub(crate) fn bounded_by(mut self, bound: Option<Instant>) -> Self {
        self.deadline = match (self.deadline, bound) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self
    }
}

/// The deadline of the handler run the caller is in, if any.
pub(crate) fn current_deadline() -> Option<Instant> {
    SCOPE.try_with(|scope| scope.deadline).ok().flatten()
}

/// `properties` with the trace context of the current span (or, without OpenTelemetry,
/// of the delivery being handled) in their headers; unchanged when there is none.
pub(crate) fn stamp(properties: BasicProperties) -> BasicProperties {
    #[cfg(feature = "otel")]
    if let Some(trace) = super::otel::current() {
        return with_trace(properties, &trace);
    }
    match SCOPE.try_with(|scope| scope.trace.clone()) {
        Ok(Some(trace)) => with_trace(properties, &trace),
        _ => properties,
    }
}

/// The longest per-message expiration RabbitMQ takes (2^32 - 1 ms, about 49 days; a
/// longer one is a channel error).
const LONGEST_EXPIRATION: Duration = Duration::from_millis(u32::MAX as u64);

/// `properties` with `deadline` in their headers, and as their expiration, so the broker
/// drops a request nobody waits for. A deadline further off than the broker's longest
/// expiration (a call with no limit, `Duration::MAX`) is no deadline: nothing is added.
pub(crate) fn with_deadline(properties: BasicProperties, deadline: Instant) -> BasicProperties {
    let left = deadline.saturating_duration_since(Instant::now());
    if left > LONGEST_EXPIRATION {
        return properties;
    }
    let ms = SystemTime::now()
        .checked_add(left)
        .map_or(Ok(i64::MAX), |at| {
            at.duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        })
        .unwrap_or(0);
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(DEADLINE_HEADER.into(), AMQPValue::LongLongInt(ms));
    // An expiration of 0 is valid (deliver now or drop); round up so 0.5 ms is not 0.
    let expiration = left.as_millis() + u128::from(!left.subsec_nanos().is_multiple_of(1_000_000));
    properties
        .with_headers(headers)
        .with_expiration(ShortString::from(expiration.to_string()))
}

fn with_trace(properties: BasicProperties, trace: &TraceHeaders) -> BasicProperties {
    let mut headers = properties
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    let value = |text: &str| AMQPValue::LongString(LongString::from(text));
    headers.insert(TRACEPARENT.into(), value(&trace.traceparent));
    match &trace.tracestate {
        Some(state) => headers.insert(TRACESTATE.into(), value(state)),
        None => headers.remove(TRACESTATE),
    };
    properties.with_headers(FieldTable::from(headers))
}

/// A header's text, as AMQP clients write strings (a long or a short string).
pub(crate) fn text(headers: &FieldTable, name: &str) -> Option<String> {
    header_str(headers, name).map(str::to_owned)
}

/// A header's text, borrowed; `None` unless it is a string of UTF-8.
pub(crate) fn header_str<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a str> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The deadline a delivery's headers carry, as an instant of this process's clock (in
/// the past for one already expired).
fn deadline_of(headers: &FieldTable) -> Option<Instant> {
    let ms = match headers.inner().get(DEADLINE_HEADER)? {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok()?.saturating_mul(1000),
        _ => return None,
    };
    // One the clocks cannot hold (a deadline far in the future) is no deadline.
    let at = UNIX_EPOCH.checked_add(Duration::from_millis(u64::try_from(ms).ok()?))?;
    let now = Instant::now();
    match at.duration_since(SystemTime::now()) {
        Ok(left) => now.checked_add(left),
        Err(past) => Some(now.checked_sub(past.duration()).unwrap_or(now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in pairs {
            table.insert((*name).into(), value.clone());
        }
        table
    }

    #[test]
    fn a_deadline_survives_the_hop_to_within_a_millisecond() {
        let deadline = Instant::now() + Duration::from_millis(1500);
        let properties = with_deadline(BasicProperties::default(), deadline);
        let expiration: u64 = properties
            .expiration()
            .as_ref()
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        assert!((1490..=1501).contains(&expiration), "{expiration}");
        let read = Scope::of(properties.headers().as_ref()).deadline.unwrap();
        let gap = if read > deadline {
            read - deadline
        } else {
            deadline - read
        };
        assert!(gap <= Duration::from_millis(2), "{gap:?}");
    }

    #[test]
    fn an_expired_deadline_reads_as_past() {
        let past = SystemTime::now() - Duration::from_secs(5);
        let ms = past.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        let scope = Scope::of(Some(&headers(&[(
            DEADLINE_HEADER,
            AMQPValue::LongLongInt(ms),
        )])));
        assert!(scope.deadline.unwrap() <= Instant::now());
    }

    #[test]
    fn a_deadline_far_in_the_future_never_panics() {
        for value in [
            AMQPValue::LongLongInt(i64::MAX),
            AMQPValue::Timestamp(u64::MAX),
        ] {
            let scope = Scope::of(Some(&headers(&[(DEADLINE_HEADER, value)])));
            if let Some(deadline) = scope.deadline {
                // Further off than the broker's longest expiration: no deadline at all.
                let properties = with_deadline(BasicProperties::default(), deadline);
                assert!(properties.expiration().is_none());
            }
        }
        let far = crate::deadline::instant_after(Duration::MAX);
        let properties = with_deadline(BasicProperties::default(), far);
        assert!(properties.headers().is_none() && properties.expiration().is_none());
        let near = crate::deadline::instant_after(Duration::from_secs(60));
        let properties = with_deadline(BasicProperties::default(), near);
        assert!(properties.headers().is_some() && properties.expiration().is_some());
    }

    #[tokio::test]
    async fn the_trace_context_of_a_delivery_is_passed_on_as_it_came() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let incoming = headers(&[
            (TRACEPARENT, AMQPValue::LongString(parent.into())),
            (
                TRACESTATE,
                AMQPValue::LongString("congo=t61rcWkgMzE".into()),
            ),
        ]);
        let scope = Scope::of(Some(&incoming));
        assert_eq!(stamp(BasicProperties::default()).headers(), &None);
        let sent = scope.run(async { stamp(BasicProperties::default()) }).await;
        let sent = sent.headers().clone().unwrap();
        // With the otel feature but no layer installed, it passes on as it came too.
        assert_eq!(text(&sent, TRACEPARENT).as_deref(), Some(parent));
        assert_eq!(
            text(&sent, TRACESTATE).as_deref(),
            Some("congo=t61rcWkgMzE")
        );
    }
}
