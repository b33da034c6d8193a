//! Typed producers: `producer_api!`.

/// Declares a producer whose commands are named, typed methods: what Postage's
/// `message_<name>()` and `rpc_<name>()` gave, checked by the compiler.
///
/// Each line is `message method(args) = "command";` for a fire-and-forget command or
/// `rpc method(args) -> Answer = "command";` for a call. A method with one argument sends
/// it as the parameters (as `producer.message_echo("text")` does in Postage); several
/// arguments are sent as an object keyed by their names; none as `{}`. The generated
/// type wraps a [`Producer`](crate::Producer); `.to(route)` gives a copy that sends along another
/// [`Route`](crate::Route).
///
/// ```no_run
/// use postage_core::{Connection, Exchange, Producer, Route, producer_api};
///
/// const ECHO: Exchange = Exchange::new("echo-exchange");
///
/// producer_api! {
///     /// The echo service's commands.
///     pub struct EchoApi {
///         /// Prints `text` on every receiver.
///         message message_echo(text: &str) = "echo";
///         /// Adds two numbers remotely.
///         rpc sum(a: i64, b: i64) -> i64 = "sum";
///     }
/// }
///
/// # async fn demo() -> postage_core::Result<()> {
/// let connection = Connection::from_env().await?;
/// let api = EchoApi::new(Producer::builder(&connection).destination(ECHO, "echo-rk").build().await?);
/// api.message_echo("A test message").await?;
/// api.to(Route::key("echo-fanout-rk")).message_echo("to everyone").await?;
/// let three: i64 = api.sum(1, 2).await?;
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! producer_api {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$method_meta:meta])*
                $kind:ident $method:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $answer:ty)? = $command:literal;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $name {
            producer: $crate::Producer,
            route: $crate::Route,
        }

        impl $name {
            /// Wraps a producer; commands go to its default destinations.
            pub fn new(producer: $crate::Producer) -> Self {
                Self { producer, route: $crate::Route::Default }
            }

            /// A copy that sends along `route` instead.
            #[must_use]
            pub fn to(&self, route: $crate::Route) -> Self {
                Self { producer: self.producer.clone(), route }
            }

            /// The producer underneath.
            pub fn producer(&self) -> &$crate::Producer {
                &self.producer
            }

            $(
                $crate::producer_api!(@method [$(#[$method_meta])*] $kind $method ($($arg : $ty),*) $(-> $answer)? = $command);
            )*
        }
    };
    (@method [$(#[$meta:meta])*] message $method:ident ($($arg:ident : $ty:ty),*) = $command:literal) => {
        $(#[$meta])*
        pub async fn $method(&self, $($arg: $ty),*) -> $crate::Result<()> {
            self.producer
                .command_to(self.route.clone(), $command, $crate::producer_api!(@params $($arg),*))
                .await
        }
    };
    (@method [$(#[$meta:meta])*] rpc $method:ident ($($arg:ident : $ty:ty),*) -> $answer:ty = $command:literal) => {
        $(#[$meta])*
        pub async fn $method(&self, $($arg: $ty),*) -> $crate::Result<$answer> {
            self.producer
                .call_with::<$answer>(
                    $command,
                    $crate::producer_api!(@params $($arg),*),
                    $crate::RpcOptions::new().route(self.route.clone()),
                )
                .await
        }
    };
    (@params) => { $crate::__private::serde_json::json!({}) };
    (@params $arg:ident) => { &$arg };
    (@params $($arg:ident),+) => { $crate::__private::serde_json::json!({ $(stringify!($arg): $arg),+ }) };
}
