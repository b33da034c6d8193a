//! `#[processor]` on a well-formed processor: it compiles, every handler of each of its
//! impl blocks is registered with what its marker says, and the registered wrappers
//! decode the call and invoke the method. No broker needed.

use std::any::{Any, TypeId};
use std::sync::Arc;

use postage_core::__private::{HandlerCall, HandlerRegistration, Outcome, inventory};
use postage_core::{
    Category, Deadline, Disposition, Filtered, HandlerError, Message, Metadata, Reply, RpcResult,
    UserId, processor,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Greeting {
    text: String,
}

#[derive(Debug, Default)]
struct Calculator;

/// Another processor, whose handlers must not be mistaken for the calculator's.
#[derive(Debug, Default)]
struct Other;

fn only_admins(message: Message) -> Filtered {
    Filtered::Pass(message)
}

mod filters {
    use postage_core::{Filtered, Message};

    pub(crate) fn drop_all(_: Message) -> Filtered {
        Filtered::Skip
    }
}

#[processor]
impl Calculator {
    const GREET_LINE: u32 = line!() + 1;
    #[message_handler("command", "greet")]
    async fn greet(&self, greeting: Greeting, metadata: &Metadata) -> Result<(), String> {
        if greeting.text.is_empty() {
            return Err(format!("empty greeting on {}", metadata.routing_key()));
        }
        Ok(())
    }

    #[rpc_handler("command", "sum")]
    async fn sum(&self, numbers: Vec<i64>) -> Result<i64, HandlerError> {
        numbers
            .into_iter()
            .try_fold(0_i64, i64::checked_add)
            .ok_or_else(|| HandlerError::error("overflow"))
    }

    #[rpc_handler("command", "double")]
    fn double(&self, n: i64) -> i64 {
        n * 2
    }

    /// Not a handler: left alone.
    fn helper(&self) -> u8 {
        7
    }
}

mod more_handlers {
    use postage_core::{Message, Metadata, Reply, RpcResult, processor};

    #[processor]
    impl super::Calculator {
        #[rpc_handler("command", "square")]
        async fn square(
            &self,
            metadata: &Metadata,
            n: i64,
            reply: Reply,
        ) -> Result<(), postage_core::HandlerError> {
            let _ = metadata.queue();
            reply.success(n * n).await?;
            Ok(())
        }

        #[rpc_handler("command", "version")]
        fn version(&self) -> RpcResult {
            RpcResult::Error {
                message: "no version".to_owned(),
            }
        }

        #[message_handler("status", "online", full_body)]
        fn online(&self, message: Message) {
            let _ = message.name;
        }

        #[message_handler("command", "audit", filter = super::only_admins, filter = super::filters::drop_all)]
        async fn audit(&self) {}
    }
}

#[processor]
impl Other {
    #[message_handler("command", "greet")]
    fn greet(&self) {}
}

/// Less common shapes: several markers on one method, a payload naming `Self`, only the
/// metadata, a raw identifier, a marker by its full path, a handler compiled out.
#[derive(Debug, Deserialize)]
struct Edge {
    depth: u8,
}

#[processor]
impl Edge {
    #[message_handler("command", "start")]
    #[message_handler("command", "restart")]
    fn r#type(&self, _metadata: &Metadata) {}

    #[rpc_handler("command", "nest")]
    fn nest(&self, inner: Self) -> u8 {
        inner.depth + self.depth
    }

    #[postage_core::message_handler("status", "idle")]
    fn idle(&self) {}

    #[cfg(any())]
    #[message_handler("command", "never")]
    fn never(&self) {}
}

fn registrations_of<T: 'static>() -> Vec<&'static HandlerRegistration> {
    let mut found: Vec<_> = inventory::iter::<HandlerRegistration>
        .into_iter()
        .filter(|registration| (registration.processor)() == TypeId::of::<T>())
        .collect();
    found.sort_by_key(|registration| registration.name);
    found
}

fn registration(name: &str) -> &'static HandlerRegistration {
    let found = registrations_of::<Calculator>();
    match found
        .into_iter()
        .find(|registration| registration.name == name)
    {
        Some(registration) => registration,
        None => panic!("no handler {name:?} registered for Calculator"),
    }
}

fn call(message: Message) -> HandlerCall {
    let metadata = Metadata::default().with_routing_key("calc-rk");
    HandlerCall {
        message,
        metadata,
        reply: None,
        deadline: None,
        states: Arc::default(),
        unit: None,
    }
}

fn calculator() -> Arc<dyn Any + Send + Sync> {
    Arc::new(Calculator)
}

#[test]
fn every_handler_of_both_impl_blocks_is_registered() {
    let found: Vec<_> = registrations_of::<Calculator>()
        .into_iter()
        .map(|r| {
            (
                r.category,
                r.kind,
                r.name,
                r.method,
                r.full_body,
                r.attempts,
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            (Category::Message, "command", "audit", "audit", false, None),
            (Category::Rpc, "command", "double", "double", false, None),
            (Category::Message, "command", "greet", "greet", false, None),
            (Category::Message, "status", "online", "online", true, None),
            (Category::Rpc, "command", "square", "square", false, None),
            (Category::Rpc, "command", "sum", "sum", false, None),
            (Category::Rpc, "command", "version", "version", false, None),
        ]
    );
    for registration in registrations_of::<Calculator>() {
        assert_eq!(registration.processor_name, "Calculator");
    }
    assert_eq!(Calculator.helper(), 7);

    let other: Vec<_> = registrations_of::<Other>()
        .into_iter()
        .map(|r| (r.processor_name, r.name, r.method))
        .collect();
    assert_eq!(other, [("Other", "greet", "greet")]);
}

#[test]
fn uncommon_shapes_are_registered_too() {
    let found: Vec<_> = registrations_of::<Edge>()
        .into_iter()
        .map(|r| (r.category, r.kind, r.name, r.method))
        .collect();
    assert_eq!(
        found,
        [
            (Category::Message, "status", "idle", "idle"),
            (Category::Rpc, "command", "nest", "nest"),
            (Category::Message, "command", "restart", "type"),
            (Category::Message, "command", "start", "type"),
        ]
    );
}

#[tokio::test]
async fn a_payload_may_name_self() {
    let nest = registrations_of::<Edge>()
        .into_iter()
        .find(|registration| registration.name == "nest")
        .expect("nest is registered");
    let message =
        Message::rpc_command("nest", serde_json::json!({"depth": 2})).expect("an edge encodes");
    match (nest.call)(Arc::new(Edge { depth: 1 }), call(message)).await {
        Outcome::Answer(result) => {
            assert_eq!(result, RpcResult::success(3).expect("a number encodes"))
        }
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[test]
fn a_registration_points_at_its_marker() {
    assert_eq!(
        registration("greet").location,
        format!("{}:{}", file!(), Calculator::GREET_LINE)
    );
}

#[tokio::test]
async fn filters_run_in_order_inside_the_call() {
    // only_admins passes, drop_all skips: the handler does not run.
    let audit = registration("audit");
    let message = Message::command("audit", ()).expect("an empty command encodes");
    assert!(matches!(
        (audit.call)(calculator(), call(message)).await,
        Outcome::Skipped
    ));
}

#[tokio::test]
async fn the_wrapper_decodes_the_payload_and_answers() {
    let sum = registration("sum");
    let message = Message::rpc_command("sum", vec![1, 2, 3]).expect("numbers encode");
    match (sum.call)(calculator(), call(message)).await {
        Outcome::Answer(result) => {
            assert_eq!(result, RpcResult::success(6).expect("a number encodes"))
        }
        other => panic!("expected an answer, got {other:?}"),
    }

    let double = registration("double");
    let message = Message::rpc_command("double", 21).expect("a number encodes");
    match (double.call)(calculator(), call(message)).await {
        Outcome::Answer(result) => {
            assert_eq!(result, RpcResult::success(42).expect("a number encodes"))
        }
        other => panic!("expected an answer, got {other:?}"),
    }

    let overflow = Message::rpc_command("sum", vec![i64::MAX, 1]).expect("numbers encode");
    match (sum.call)(calculator(), call(overflow)).await {
        Outcome::Answer(RpcResult::Error { message }) => assert_eq!(message, "overflow"),
        other => panic!("expected an error result, got {other:?}"),
    }
}

#[tokio::test]
async fn the_wrapper_passes_the_metadata_and_the_handler_result() {
    let greet = registration("greet");
    let hello = Message::command("greet", serde_json::json!({"text": "hello"}))
        .expect("a greeting encodes");
    assert!(matches!(
        (greet.call)(calculator(), call(hello)).await,
        Outcome::Done
    ));

    let empty =
        Message::command("greet", serde_json::json!({"text": ""})).expect("a greeting encodes");
    match (greet.call)(calculator(), call(empty)).await {
        Outcome::Failed(error) => assert_eq!(error.message(), "empty greeting on calc-rk"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn the_wrapper_refuses_what_it_cannot_call() {
    let sum = registration("sum");
    let words = Message::rpc_command("sum", vec!["one", "two"]).expect("words encode");
    assert!(matches!(
        (sum.call)(calculator(), call(words)).await,
        Outcome::Failed(_)
    ));

    let numbers = Message::rpc_command("sum", vec![1]).expect("numbers encode");
    assert!(matches!(
        (sum.call)(Arc::new(Other), call(numbers)).await,
        Outcome::Failed(_)
    ));

    // The runtime hands a reply handle to every RPC call; without one the handler is not run.
    let square = registration("square");
    let message = Message::rpc_command("square", 3).expect("a number encodes");
    assert!(matches!(
        (square.call)(calculator(), call(message)).await,
        Outcome::Failed(_)
    ));
}

#[tokio::test]
async fn full_body_hands_over_the_whole_message() {
    let online = registration("online");
    let outcome = (online.call)(calculator(), call(Message::status("online"))).await;
    assert!(matches!(outcome, Outcome::Done));
}

/// The result type a user's crate might name for its handlers.
type InvResult<T> = Result<T, HandlerError>;

/// Handlers with the return types Rust users write.
#[derive(Debug, Default)]
struct Inventory;

#[processor]
impl Inventory {
    #[rpc_handler("command", "inv_alias")]
    fn alias(&self, n: i64) -> InvResult<i64> {
        if n < 0 {
            return Err(HandlerError::error("negative"));
        }
        Ok(n)
    }

    #[rpc_handler("command", "inv_anyhow")]
    async fn any(&self, n: i64) -> anyhow::Result<i64> {
        anyhow::ensure!(n >= 0, "negative");
        Ok(n)
    }

    #[rpc_handler("command", "inv_text")]
    fn text(&self, n: i64) -> Result<i64, String> {
        if n < 0 {
            return Err("negative".to_owned());
        }
        Ok(n)
    }

    #[rpc_handler("command", "inv_boxed")]
    fn boxed(&self, n: i64) -> Result<u8, Box<dyn std::error::Error + Send + Sync>> {
        Ok(u8::try_from(n)?)
    }

    /// Arguments by type, in any order, the payload borrowed.
    #[message_handler("command", "inv_restock")]
    fn restock(
        &self,
        metadata: &Metadata,
        sku: &str,
        user: UserId,
        deadline: Deadline,
    ) -> Result<(), String> {
        if user.get() != Some("ops") {
            return Err(format!(
                "{} may not restock {sku} via {}",
                user.get().unwrap_or("nobody"),
                metadata.routing_key()
            ));
        }
        assert_eq!(deadline.remaining(), None, "no timeout here");
        Ok(())
    }

    /// The reply handle first, a borrowed payload after it, in an async handler.
    #[rpc_handler("command", "inv_shout")]
    async fn shout(&self, reply: Reply, text: &str) -> Result<(), HandlerError> {
        let loud = text.to_uppercase();
        tokio::task::yield_now().await;
        reply
            .success(loud)
            .await
            .map_err(|e| HandlerError::error(e.to_string()))
    }

    #[message_handler("command", "inv_later")]
    async fn later(&self, n: i64) -> anyhow::Result<Disposition> {
        anyhow::ensure!(n != 0, "zero");
        Ok(if n > 0 {
            Disposition::Ack
        } else {
            Disposition::Retry(None)
        })
    }
}

/// The outcome of Inventory's handler `name` called with `n`.
async fn run_inventory(name: &str, n: i64) -> Outcome {
    let registration = registrations_of::<Inventory>()
        .into_iter()
        .find(|registration| registration.name == name)
        .expect("the handler is registered");
    let message = if registration.category == Category::Rpc {
        Message::rpc_command(name, n)
    } else {
        Message::command(name, n)
    };
    (registration.call)(
        Arc::new(Inventory),
        call(message.expect("a number encodes")),
    )
    .await
}

#[tokio::test]
async fn arguments_are_recognised_by_type_in_any_order() {
    let restock = registrations_of::<Inventory>()
        .into_iter()
        .find(|registration| registration.name == "inv_restock")
        .expect("registered");
    let message = || Message::command("inv_restock", "apple").expect("a text encodes");
    match (restock.call)(Arc::new(Inventory), call(message())).await {
        Outcome::Failed(error) => {
            assert_eq!(error.message(), "nobody may not restock apple via calc-rk")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let mut by_ops = call(message());
    by_ops.metadata = by_ops.metadata.with_user_id("ops");
    assert!(matches!(
        (restock.call)(Arc::new(Inventory), by_ops).await,
        Outcome::Done
    ));
    let inventory = postage_core::testing::TestProcessor::new(Inventory).unwrap();
    assert_eq!(
        inventory.call::<String>("inv_shout", "hi").await.unwrap(),
        "HI"
    );
}

#[tokio::test]
async fn aliases_anyhow_strings_and_boxed_errors_answer_as_what_they_are() {
    for name in ["inv_alias", "inv_anyhow", "inv_text"] {
        match run_inventory(name, 4).await {
            Outcome::Answer(result) => assert_eq!(result, RpcResult::success(4).unwrap()),
            other => panic!("{name}: expected a success, got {other:?}"),
        }
    }
    // Foreseen errors: a HandlerError::error through an alias, a String.
    for name in ["inv_alias", "inv_text"] {
        match run_inventory(name, -1).await {
            Outcome::Answer(RpcResult::Error { message }) => assert_eq!(message, "negative"),
            other => panic!("{name}: expected an error result, got {other:?}"),
        }
    }
    // Any other error: an exception.
    match run_inventory("inv_anyhow", -1).await {
        Outcome::Answer(RpcResult::Exception { kind, message }) => {
            assert_eq!((kind.as_str(), message.as_str()), ("Error", "negative"))
        }
        other => panic!("expected an exception, got {other:?}"),
    }
    match run_inventory("inv_boxed", 300).await {
        Outcome::Answer(RpcResult::Exception { message, .. }) => {
            assert!(message.contains("out of range"), "{message}")
        }
        other => panic!("expected an exception, got {other:?}"),
    }
    // A message handler says what becomes of its message.
    assert!(matches!(run_inventory("inv_later", 1).await, Outcome::Done));
    assert!(matches!(
        run_inventory("inv_later", -1).await,
        Outcome::Settle(Disposition::Retry(None))
    ));
    match run_inventory("inv_later", 0).await {
        Outcome::Failed(error) => assert_eq!(error.message(), "zero"),
        other => panic!("expected a failure, got {other:?}"),
    }
}
