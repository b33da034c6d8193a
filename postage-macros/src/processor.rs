//! `#[processor]`: reads the handler markers of an inherent impl block, strips them, and
//! registers one handler per marker after the impl.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::{Attribute, Error, ImplItem, Item, ItemImpl};

use crate::marker::{Category, Marker};
use crate::registration::{registration, type_name};
use crate::signature::Signature;
use crate::timer;
use crate::{Errors, Failure};

const CONCRETE: &str = "#[processor] goes on an inherent impl of a concrete type";

/// Expands `#[processor(args)] item`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> Result<TokenStream, Failure> {
    let mut errors = Errors::default();
    if !args.is_empty() {
        errors.push(Error::new_spanned(&args, "#[processor] takes no arguments"));
    }
    let mut block = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Impl(block)) => block,
        Ok(_) => {
            let error = errors.and(Error::new(Span::call_site(), CONCRETE));
            return Err(Failure { error, item });
        }
        Err(error) => {
            let error = errors.and(error);
            return Err(Failure { error, item });
        }
    };

    if let Some((_, path, _)) = &block.trait_ {
        errors.push(Error::new_spanned(
            path,
            format!("{CONCRETE}, not on a trait impl"),
        ));
    }
    if !block.generics.params.is_empty() {
        errors.push(Error::new_spanned(
            &block.generics,
            format!(
                "{CONCRETE}, not on a generic impl (handlers are registered for one type \
                 each): hold what varies as a field (`Box<dyn Trait>`, `Arc<dyn Trait>`) \
                 or take it as a `State<T>` argument"
            ),
        ));
    } else if let Some(where_clause) = &block.generics.where_clause {
        errors.push(Error::new_spanned(
            where_clause,
            format!("{CONCRETE}, without a where clause"),
        ));
    }

    let registrations = handlers(&mut block, &mut errors);
    match errors.finish() {
        Ok(()) => Ok(quote!(#block #(#registrations)*)),
        Err(error) => Err(Failure {
            error,
            item: block.into_token_stream(),
        }),
    }
}

/// Strips the markers from every item of `block` and returns the registrations of the
/// well-formed ones; the others are reported in `errors`.
fn handlers(block: &mut ItemImpl, errors: &mut Errors) -> Vec<TokenStream> {
    let mut registrations = Vec::new();
    let block_ty = (*block.self_ty).clone();
    for item in &mut block.items {
        if let ImplItem::Fn(method) = item {
            let timers: Vec<Attribute> = method
                .attrs
                .iter()
                .filter(|a| timer::is_timer(a))
                .cloned()
                .collect();
            method.attrs.retain(|a| !timer::is_timer(a));
            for attr in &timers {
                let name = type_name(&block_ty);
                if let Some(tokens) =
                    errors.take(timer::registration(&block_ty, method, attr, &name))
                {
                    registrations.push(tokens);
                }
            }
        }
        let (markers, method) = match item {
            ImplItem::Fn(method) => (take_markers(&mut method.attrs), Some(&*method)),
            ImplItem::Const(item) => (take_markers(&mut item.attrs), None),
            ImplItem::Type(item) => (take_markers(&mut item.attrs), None),
            ImplItem::Macro(item) => (take_markers(&mut item.attrs), None),
            _ => (Vec::new(), None),
        };
        for (category, attr) in markers {
            let Some(method) = method else {
                errors.push(Error::new_spanned(
                    &attr,
                    format!("#[{}] goes on a method", category.attribute()),
                ));
                continue;
            };
            // The signature is checked even when the marker is wrong, to report both.
            let marker = errors.take(Marker::parse(category, &attr));
            let full_body = marker.as_ref().and_then(|marker| marker.full_body.as_ref());
            let signature = errors.take(Signature::classify(&method.sig, category, full_body));
            if let (Some(marker), Some(signature)) = (marker, signature) {
                registrations.push(registration(&block.self_ty, method, &marker, &signature));
            }
        }
    }
    registrations
}

/// Removes the handler markers from `attrs` and returns them.
fn take_markers(attrs: &mut Vec<Attribute>) -> Vec<(Category, Attribute)> {
    let mut markers = Vec::new();
    attrs.retain(|attr| match Category::of(attr) {
        Some(category) => {
            markers.push((category, attr.clone()));
            false
        }
        None => true,
    });
    markers
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;

    use super::expand;

    /// The messages of every error `item` gets, in order.
    fn errors(item: TokenStream) -> Vec<String> {
        match expand(TokenStream::new(), item) {
            Ok(_) => Vec::new(),
            Err(failure) => failure.error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn expansion(item: TokenStream) -> String {
        match expand(TokenStream::new(), item) {
            Ok(tokens) => tokens.to_string(),
            Err(failure) => panic!("unexpected error: {}", failure.error),
        }
    }

    #[test]
    fn strips_the_markers_and_registers_each_handler() {
        let out = expansion(quote! {
            impl Echo {
                #[message_handler("command", "echo", filter = filters::only_admins)]
                async fn echo(&self, text: String, metadata: &Metadata) {}

                #[rpc_handler("command", "sum")]
                fn sum(&self, numbers: Vec<i64>) -> Result<i64, HandlerError> { todo!() }

                fn helper(&self) {}
            }
        });
        assert!(!out.contains("message_handler"), "{out}");
        assert!(!out.contains("rpc_handler"), "{out}");
        assert_eq!(out.matches("inventory :: submit !").count(), 2, "{out}");
        assert!(out.contains("fn helper (& self) { }"), "{out}");
        assert!(
            out.contains(
                "< String as :: postage_core :: __private :: FromCall > :: from_call (& parts)"
            ),
            "{out}"
        );
        assert!(
            out.contains("< & Metadata as :: postage_core :: __private :: FromCall > :: from_call"),
            "{out}"
        );
        assert!(out.contains("this . echo (arg0 , arg1) . await"), "{out}");
        // At most one payload, checked where the types are known.
        assert!(
            out.contains("(< & 'static Metadata as :: postage_core :: __private :: FromCall < 'static >> :: PAYLOAD as usize) <= 1"),
            "{out}"
        );
        assert!(
            out.contains("run_filter (& filters :: only_admins , message , & call . metadata)"),
            "{out}"
        );
        assert!(
            out.contains("let answer = this . sum (arg0) ; let kind = (&& & :: postage_core :: __private :: Probe (& answer)) . rpc_kind () ;"),
            "{out}"
        );
        assert!(
            out.contains("category : :: postage_core :: Category :: Rpc"),
            "{out}"
        );
        assert!(out.contains("processor_name : \"Echo\""), "{out}");
    }

    #[test]
    fn only_postages_own_markers_are_read() {
        let out = expansion(quote! {
            impl Clock {
                #[timer(every = "1s")]
                fn a(&self) {}

                #[postage_core::timer(every = "2s")]
                async fn b(&self) {}

                #[profiling::timer(every = "3s")]
                fn c(&self) {}

                #[other::rpc_handler("command", "d")]
                fn d(&self) -> u8 { 0 }
            }
        });
        assert_eq!(out.matches("TimerRegistration").count(), 2, "{out}");
        assert!(!out.contains("HandlerRegistration"), "{out}");
        assert!(out.contains("Duration :: from_millis (1000u64)"), "{out}");
        assert!(out.contains("Duration :: from_millis (2000u64)"), "{out}");
        // Another crate's attributes of the same names stay where they were written.
        assert!(
            out.contains("# [profiling :: timer (every = \"3s\")] fn c"),
            "{out}"
        );
        assert!(
            out.contains("# [other :: rpc_handler (\"command\" , \"d\")] fn d"),
            "{out}"
        );
        // A timer runs in the same wrapper as a handler.
        assert!(out.contains("this . b () . await"), "{out}");
        assert_eq!(
            out.matches("Outcome :: wrong_processor ()").count(),
            2,
            "{out}"
        );
    }

    #[test]
    fn calls_the_method_with_its_arguments_in_declared_order() {
        let out = expansion(quote! {
            impl Calc {
                #[rpc_handler("command", "slow")]
                async fn slow(&self, metadata: &Metadata, n: u32, reply: Reply) {}
            }
        });
        assert!(
            out.contains("< :: postage_core :: Reply as :: postage_core :: __private :: FromCall > :: from_call"),
            "{out}"
        );
        assert!(
            out.contains("this . slow (arg0 , arg1 , arg2) . await"),
            "{out}"
        );
        assert!(
            out.contains(":: postage_core :: __private :: replied ("),
            "{out}"
        );
    }

    #[test]
    fn answers_by_return_type() {
        let out = expansion(quote! {
            impl Calc {
                #[rpc_handler("command", "raw")]
                fn raw(&self) -> postage_core::RpcResult { todo!() }
                #[rpc_handler("command", "value")]
                fn value(&self) -> Vec<u8> { todo!() }
            }
        });
        // Which conversion applies is the return type's to say, in the generated code.
        assert_eq!(out.matches(". rpc_kind ()").count(), 2, "{out}");
        assert!(out.contains("let answer = this . raw () ;"), "{out}");
        assert!(out.contains("let answer = this . value () ;"), "{out}");
        // Nothing of the call is used, so the parameter is unnamed.
        assert!(
            out.contains("_ : :: postage_core :: __private :: HandlerCall"),
            "{out}"
        );
    }

    #[test]
    fn attempts_and_timeout_reach_the_registration() {
        let out = expansion(quote! {
            impl Worker {
                #[message_handler("command", "work", attempts = 5, timeout = "1500ms")]
                fn work(&self) {}
                #[rpc_handler("command", "ask", timeout = "2m")]
                fn ask(&self) -> u8 { 0 }
            }
        });
        assert!(
            out.contains("attempts : :: std :: option :: Option :: Some (5)"),
            "{out}"
        );
        assert!(out.contains("Duration :: from_millis (1500u64)"), "{out}");
        assert!(out.contains("Duration :: from_millis (120000u64)"), "{out}");
        let found = errors(quote! {
            impl Worker {
                #[message_handler("command", "a", attempts = 0, timeout = "soon")]
                fn a(&self) {}
                #[rpc_handler("command", "b", attempts = 2)]
                fn b(&self) -> u8 { 0 }
            }
        });
        assert_eq!(
            found,
            [
                "expected the number of attempts, at least 1, such as `attempts = 3`",
                "expected a duration such as `timeout = \"30s\"` (units ms, s, m)",
                "`attempts` applies only to #[message_handler]; an rpc caller retries a call itself",
            ]
        );
    }

    #[test]
    fn full_body_hands_over_the_message() {
        let out = expansion(quote! {
            impl Log {
                #[message_handler("status", "online", full_body)]
                fn online(&self, message: postage_core::Message) {}
            }
        });
        assert!(
            out.contains("let arg0 = parts . message . clone () ;"),
            "{out}"
        );
        assert!(!out.contains("FromCall > :: from_call"), "{out}");
        assert!(out.contains("full_body : true"), "{out}");
    }

    #[test]
    fn self_in_a_payload_type_names_the_processor() {
        let out = expansion(quote! {
            impl Counter {
                #[message_handler("command", "merge")]
                fn merge(&self, other: Vec<Self>) {}
            }
        });
        assert!(
            out.contains("< Vec < Counter > as :: postage_core :: __private :: FromCall >"),
            "{out}"
        );
    }

    #[test]
    fn processor_name_is_spaced_as_written() {
        let out = expansion(quote! {
            impl crate::pair::Pair<(u8, &'static str)> {
                #[message_handler("command", "x")]
                fn x(&self) {}
            }
        });
        assert!(
            out.contains(r#"processor_name : "Pair<(u8, &'static str)>""#),
            "{out}"
        );
    }

    #[test]
    fn cfg_on_the_method_applies_to_its_registration() {
        let out = expansion(quote! {
            impl Echo {
                #[cfg(feature = "echo")]
                #[message_handler("command", "echo")]
                fn echo(&self) {}
            }
        });
        assert!(
            out.contains("# [cfg (feature = \"echo\")] const _ : () ="),
            "{out}"
        );
    }

    #[test]
    fn reports_every_error_at_once() {
        let found = errors(quote! {
            impl Echo {
                #[message_handler("command", "")]
                fn a(&mut self) {}
                #[rpc_handler("status", "b", full_body, verbose)]
                fn b(self) {}
                #[rpc_handler("command", "c")]
                fn c(&self, x: u8, y: u8, z: u8) {}
                #[message_handler("command", "d")]
                fn d<T>(&self, a: &Metadata, b: &Metadata, c: &mut u8) {}
            }
        });
        assert_eq!(
            found,
            [
                "the handler name cannot be empty",
                "a handler takes `&self`, not `&mut self`: \
                 handlers run concurrently on a shared processor",
                "rpc handlers answer only \"command\" messages",
                "`full_body` applies only to #[message_handler]; \
                 an rpc handler's payload is the command's parameters",
                "unknown flag `verbose`; expected `full_body`, `filter = path::to_fn`, \
                 `attempts = 3` or `timeout = \"30s\"`",
                "a handler takes `&self`, not `self` by value: the processor is shared by every call",
                "an rpc handler returns its answer, or takes a Reply",
                // Three payloads: checked where the types are known, by the compiler.
                "an rpc handler returns its answer, or takes a Reply",
                "a handler cannot be generic: the message decides its argument types",
                "a handler cannot take `&mut` arguments; the metadata is borrowed as `&Metadata`",
            ]
        );
    }

    #[test]
    fn checks_the_receiver() {
        let found = errors(quote! {
            impl Echo {
                #[message_handler("command", "a")]
                fn a(&mut self) {}
                #[message_handler("command", "b")]
                fn b(self) {}
                #[message_handler("command", "c")]
                fn c() {}
                #[message_handler("command", "d")]
                fn d(self: &Self) {}
            }
        });
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("not `&mut self`"), "{found:?}");
        assert!(found[1].contains("not `self` by value"), "{found:?}");
        assert!(
            found[2].contains("its first argument is `&self`"),
            "{found:?}"
        );
    }

    #[test]
    fn rejects_trait_and_generic_impls() {
        let found = errors(quote! {
            impl<T> Display for Wrapper<T> {}
        });
        assert_eq!(
            found,
            [
                "#[processor] goes on an inherent impl of a concrete type, not on a trait impl",
                "#[processor] goes on an inherent impl of a concrete type, not on a generic impl \
                 (handlers are registered for one type each): hold what varies as a field \
                 (`Box<dyn Trait>`, `Arc<dyn Trait>`) or take it as a `State<T>` argument",
            ]
        );
    }

    #[test]
    fn rejects_malformed_markers() {
        let found = errors(quote! {
            impl Echo {
                #[message_handler]
                fn a(&self) {}
                #[message_handler("command")]
                fn b(&self) {}
                #[message_handler(command, "c")]
                fn c(&self) {}
                #[message_handler("command", "d", filter = 3, colour = red, "e")]
                fn d(&self) {}
                #[message_handler("command", "e", full_body)]
                fn e(&self) {}
                #[rpc_handler("command", "f")]
                const F: u8 = 0;
            }
        });
        assert_eq!(
            found,
            [
                "expected the message type and name, as in #[message_handler(\"command\", \"echo\")]",
                "expected the message type and name, as in #[message_handler(\"command\", \"echo\")]",
                "expected the message type, such as \"command\" as a string literal",
                "expected the path of a filter function, such as `filters::only_admins`",
                "unknown option; expected `full_body`, `filter = path::to_fn`, \
                 `attempts = 3` or `timeout = \"30s\"`",
                "unexpected string: the message type and name come first, once",
                "`full_body` hands the whole `Message` to the handler, \
                 but this method takes no argument for it",
                "#[rpc_handler] goes on a method",
            ]
        );
    }

    #[test]
    fn re_emits_the_impl_without_markers_on_error() {
        let failure = match expand(
            TokenStream::new(),
            quote! {
                impl Echo {
                    #[message_handler("command", "")]
                    fn a(&self) {}
                }
            },
        ) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(failure) => failure,
        };
        assert_eq!(
            failure.item.to_string(),
            quote!(impl Echo { fn a(&self) {} }).to_string()
        );
    }

    #[test]
    fn takes_no_arguments_and_only_impl_blocks() {
        let found = match expand(
            quote!(verbose),
            quote!(
                struct Echo;
            ),
        ) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(failure) => failure
                .error
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>(),
        };
        assert_eq!(
            found,
            [
                "#[processor] takes no arguments",
                "#[processor] goes on an inherent impl of a concrete type",
            ]
        );
    }
}
