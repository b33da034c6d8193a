//! Trace context across hops, read back from OpenTelemetry's in-memory exporter: a
//! producer -> processor A -> RPC to processor B chain is one trace, each span the child
//! of the one that caused it, before and after the broker closes every connection.
//!
//! The subscriber is this test's own (`set_default`, on a one-thread runtime that runs
//! every task of the test), so the other tests' spans do not mix in.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use postage_core::{Connection, Exchange, Processor, Producer, Queue, processor};
use postage_tests::{close_connections_named, unique};
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing_subscriber::prelude::*;

struct Doubler;

#[processor]
impl Doubler {
    #[rpc_handler("command", "double")]
    async fn double(&self, n: i64) -> i64 {
        n * 2
    }
}

struct Asker {
    calls: Producer,
    done: mpsc::UnboundedSender<i64>,
}

#[processor]
impl Asker {
    #[message_handler("command", "work")]
    async fn work(&self, n: i64) {
        match self.calls.call::<i64>("double", n).await {
            Ok(doubled) => {
                let _ = self.done.send(doubled);
            }
            Err(error) => tracing::error!(%error, "the call failed"),
        }
    }
}

/// The spans of one trace by name, each with its parent.
struct Trace {
    spans: HashMap<String, SpanData>,
}

impl Trace {
    /// The spans of the trace a span named `root` began, of those that reached B (a
    /// round may have sent more than once).
    fn of(exporter: &InMemorySpanExporter, root: &str) -> Self {
        let all = exporter.get_finished_spans().unwrap();
        let trace_of = |id: TraceId| -> HashMap<String, SpanData> {
            all.iter()
                .filter(|s| s.span_context.trace_id() == id)
                .map(|s| (s.name.to_string(), s.clone()))
                .collect()
        };
        let spans = all
            .iter()
            .filter(|s| s.name == root)
            .map(|s| trace_of(s.span_context.trace_id()))
            .find(|spans| spans.contains_key("handle Doubler::double"))
            .unwrap_or_else(|| panic!("no trace from {root} reached B: {:?}", names(&all)));
        Self { spans }
    }

    fn id(&self, name: &str) -> SpanId {
        self.get(name).span_context.span_id()
    }

    fn get(&self, name: &str) -> &SpanData {
        self.spans.get(name).unwrap_or_else(|| {
            panic!(
                "no span {name} in the trace: {:?}",
                self.spans.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Asserts that `child` is a child of `parent`.
    fn parent(&self, child: &str, parent: &str) {
        assert_eq!(
            self.get(child).parent_span_id,
            self.id(parent),
            "{child} is a child of {parent}"
        );
    }
}

fn names(spans: &[SpanData]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_ref()).collect()
}

#[tokio::test]
async fn a_producer_to_a_to_rpc_b_chain_is_one_trace_across_a_reconnect() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let name = unique("trace");
    let mut config = postage_core::Config::from_env().unwrap();
    config.connection_name = Some(name.clone());
    let connection = Connection::connect(&config).await.unwrap();
    let work = Exchange::named(unique("trace-work"))
        .auto_delete(true)
        .durable(false);
    let calls = Exchange::named(unique("trace-calls"))
        .auto_delete(true)
        .durable(false);
    let (work_queue, call_queue) = (unique("trace-a"), unique("trace-b"));

    let doubler = Processor::builder(&connection, Doubler)
        .bind(
            calls.clone(),
            Queue::new(call_queue.as_str()).auto_delete(true),
            "b",
        )
        .build()
        .await
        .unwrap();
    let caller = Producer::builder(&connection)
        .destination(calls.clone(), "b")
        .build()
        .await
        .unwrap();
    let (done, mut finished) = mpsc::unbounded_channel();
    let asker = Processor::builder(
        &connection,
        Asker {
            calls: caller,
            done,
        },
    )
    .bind(
        work.clone(),
        Queue::new(work_queue.as_str()).auto_delete(true),
        "a",
    )
    .build()
    .await
    .unwrap();
    let (stop_a, stop_b) = (asker.handle(), doubler.handle());
    let running_a = tokio::spawn(asker.run());
    let running_b = tokio::spawn(doubler.run());
    let producer = Producer::builder(&connection)
        .destination(work.clone(), "a")
        .build()
        .await
        .unwrap();

    for round in 0..2 {
        if round == 1 {
            // Every connection of this test is closed by the broker; the chain recovers.
            close_connections_named(&name).await;
        }
        let root = format!("round {round}");
        exporter.reset();
        // Sent until it goes through: just after the close the producer may find its
        // channel gone and the processors still recovering.
        let mut answered = None;
        for _ in 0..40 {
            let sent = producer
                .command("work", 21)
                .instrument(tracing::info_span!("round", otel.name = %root))
                .await;
            if sent.is_ok()
                && let Ok(Some(doubled)) =
                    tokio::time::timeout(Duration::from_secs(2), finished.recv()).await
            {
                answered = Some(doubled);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(answered, Some(42), "round {round}: the chain answered");
        // The last spans (B's answer, A's settlement) end just after the answer.
        tokio::time::sleep(Duration::from_millis(300)).await;

        let trace = Trace::of(&exporter, &root);
        let publish_work = format!("publish {}", work.name());
        let publish_call = format!("publish {}", calls.name());
        let process_a = format!("process {work_queue}");
        let process_b = format!("process {call_queue}");
        trace.parent(&publish_work, &root);
        trace.parent(&process_a, &publish_work);
        trace.parent("handle Asker::work", &process_a);
        trace.parent("call double", "handle Asker::work");
        trace.parent(&publish_call, "call double");
        trace.parent(&process_b, &publish_call);
        trace.parent("handle Doubler::double", &process_b);
        trace.parent("publish amq.default", &process_b);
        assert!(trace.get(&process_b).parent_span_is_remote);
    }

    stop_a.shutdown();
    stop_b.shutdown();
    running_a.await.unwrap().unwrap();
    running_b.await.unwrap().unwrap();
    connection.close().await.unwrap();
    let _ = provider.shutdown();
}

/// One HTTP request a fake collector received: its path and body.
fn receive_one(listener: std::net::TcpListener) -> (String, Vec<u8>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let (mut stream, _) = listener.accept().unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (path, body)
}

#[tokio::test]
async fn spans_are_exported_over_otlp() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let collector = std::thread::spawn(move || receive_one(listener));
    let otlp = postage_core::telemetry::otel::Otlp::to("postage-otlp-test", &endpoint).unwrap();
    let connection = postage_tests::connect().await;
    let exchange = Exchange::named(unique("otlp"))
        .auto_delete(true)
        .durable(false);
    let producer = Producer::builder(&connection)
        .destination(exchange.clone(), "nowhere")
        .build()
        .await
        .unwrap();
    {
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(otlp.layer()));
        producer.command("hello", 1).await.unwrap();
    }
    otlp.shutdown();
    let (path, body) = collector.join().unwrap();
    assert_eq!(path, "/v1/traces");
    let contains = |needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        contains("postage-otlp-test"),
        "the service name is exported"
    );
    assert!(
        contains(&format!("publish {}", exchange.name())),
        "the publish span is exported"
    );
    connection.close().await.unwrap();
}
