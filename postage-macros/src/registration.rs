//! The code registered for one handler: a wrapper that decodes the call and invokes the
//! method, and the `inventory` entry that names it.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::{Attribute, ImplItemFn, Type};

use crate::marker::{Category, Marker};
use crate::signature::{Answer, Role, Signature};

/// One `const _: () = { ... };` block registering `method` of `self_ty` as the handler
/// `marker` describes.
pub(crate) fn registration(
    self_ty: &Type,
    method: &ImplItemFn,
    marker: &Marker,
    signature: &Signature,
) -> TokenStream {
    let filtered = !marker.filters.is_empty();
    let uses_call = !signature.args.is_empty() || filtered;
    let mut prelude = filters(marker, self_ty);
    let arguments = arguments(signature, self_ty);
    prelude.extend(arguments.prelude);
    let payload_check = payload_check(&arguments.typed, method);
    let schemas = schemas(&arguments.typed, signature, method, self_ty);
    let states = states(&arguments.typed);
    let answer = answer(signature, method, &arguments.args);

    let call_param = match (uses_call, filtered) {
        (_, true) => quote!(mut call),
        (true, false) => quote!(call),
        (false, false) => quote!(_),
    };
    let method_name = &method.sig.ident;
    let body = wrapped(self_ty, method_name.span(), quote!(#prelude #answer));

    let processor_name = type_name(self_ty);
    let category = match marker.category {
        Category::Message => quote!(::postage_core::Category::Message),
        Category::Rpc => quote!(::postage_core::Category::Rpc),
    };
    let (kind, name) = (&marker.kind, &marker.name);
    let full_body = marker.full_body.is_some();
    let method_str = method_name.unraw().to_string();
    let location = location(marker.span);
    let cfgs = cfgs(method);
    let attempts = match &marker.attempts {
        Some(n) => quote!(::std::option::Option::Some(#n)),
        None => quote!(::std::option::Option::None),
    };
    let timeout = match marker.timeout {
        Some(ms) => quote!(::std::option::Option::Some(::std::time::Duration::from_millis(#ms))),
        None => quote!(::std::option::Option::None),
    };

    quote! {
        #(#cfgs)*
        const _: () = {
            #payload_check

            fn __postage_call(
                processor: ::std::sync::Arc<
                    dyn ::std::any::Any + ::std::marker::Send + ::std::marker::Sync,
                >,
                #call_param: ::postage_core::__private::HandlerCall,
            ) -> ::postage_core::__private::BoxFuture<::postage_core::__private::Outcome> {
                #body
            }

            #schemas

            ::postage_core::__private::inventory::submit! {
                ::postage_core::__private::HandlerRegistration {
                    processor: || ::std::any::TypeId::of::<#self_ty>(),
                    processor_name: #processor_name,
                    category: #category,
                    kind: #kind,
                    name: #name,
                    full_body: #full_body,
                    method: #method_str,
                    location: #location,
                    attempts: #attempts,
                    timeout: #timeout,
                    states: #states,
                    payload_schema: __postage_payload_schema,
                    answer_schema: __postage_answer_schema,
                    call: __postage_call,
                }
            }
        };
    }
}

/// The future a registered function returns: finds the processor's state as `this`
/// (the wrong type is an outcome, not a panic), then runs `body`. Spanned at `span` (the
/// method's name), so a future that is not `Send` is reported there. Handlers and timers
/// share it.
pub(crate) fn wrapped(self_ty: &Type, span: Span, body: TokenStream) -> TokenStream {
    quote_spanned! {span=>
        ::std::boxed::Box::pin(async move {
            let ::std::option::Option::Some(this) = processor.downcast_ref::<#self_ty>() else {
                return ::postage_core::__private::Outcome::wrong_processor();
            };
            #body
        })
    }
}

/// `this.method(args)`, awaited when the method is async; spanned at `span` (its return
/// type), so a type the runtime cannot answer with is reported there.
pub(crate) fn invocation(
    method: &ImplItemFn,
    args: &[TokenStream],
    is_async: bool,
    span: Span,
) -> TokenStream {
    let name = &method.sig.ident;
    let invoke = quote_spanned!(span=> this.#name(#(#args),*));
    if is_async {
        quote_spanned!(span=> #invoke.await)
    } else {
        invoke
    }
}

/// Where the marker at `span` is, as `file:line`: spanned there so `line!()` and `file!()`
/// name the marker's place.
pub(crate) fn location(span: Span) -> TokenStream {
    quote_spanned! {span=>
        ::std::concat!(::std::file!(), ":", ::std::line!())
    }
}

/// The method's `#[cfg]`s, which apply to its registration too.
pub(crate) fn cfgs(method: &ImplItemFn) -> impl Iterator<Item = &Attribute> {
    method
        .attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"))
}

/// The marker's filters, each on what the one before passed; inside the call, so a panic
/// in one is caught as one in the handler.
fn filters(marker: &Marker, self_ty: &Type) -> TokenStream {
    let mut prelude = TokenStream::new();
    for filter in &marker.filters {
        let span = syn::spanned::Spanned::span(filter);
        let is_method = filter
            .path
            .segments
            .first()
            .is_some_and(|s| s.ident == "Self");
        let path = replace_self(filter.to_token_stream(), self_ty);
        let run = if is_method {
            quote_spanned! {span=>
                ::postage_core::__private::FilterResult::into_filtered(
                    #path(this, message, &call.metadata),
                )
                .await
            }
        } else {
            quote_spanned! {span=>
                ::postage_core::__private::run_filter(&#path, message, &call.metadata)
            }
        };
        prelude.extend(quote! {
            let message = call.message;
            call.message = match #run {
                ::postage_core::__private::Filtered::Pass(next) => next,
                ::postage_core::__private::Filtered::Skip => {
                    return ::postage_core::__private::Outcome::Skipped;
                }
                ::postage_core::__private::Filtered::Reject(reason) => {
                    return ::postage_core::__private::Outcome::Refused(reason);
                }
            };
        });
    }
    prelude
}

/// The method's arguments, each taken from the call's parts by its type.
struct Arguments {
    /// What takes them, in order.
    prelude: TokenStream,
    /// Their names, as the method is called with them.
    args: Vec<TokenStream>,
    /// The types taken through `FromCall` (all but the full body and the reply).
    typed: Vec<TokenStream>,
}

fn arguments(signature: &Signature, self_ty: &Type) -> Arguments {
    let mut prelude = TokenStream::new();
    let mut args = Vec::new();
    let mut typed = Vec::new();
    if !signature.args.is_empty() {
        prelude.extend(quote! {
            let parts = ::postage_core::__private::CallParts::new(call);
        });
    }
    for (n, arg) in signature.args.iter().enumerate() {
        let name = quote::format_ident!("arg{n}");
        match &arg.role {
            Role::FullBody => {
                prelude.extend(quote! { let #name = parts.message.clone(); });
            }
            role => {
                let ty = match role {
                    Role::Typed(ty) => replace_self(ty.to_token_stream(), self_ty),
                    _ => quote!(::postage_core::Reply),
                };
                if let Role::Typed(_) = role {
                    typed.push(ty.clone());
                }
                // Spanned at the argument's type, so a type no handler is given is
                // reported there.
                let take = quote_spanned! {arg.span=>
                    <#ty as ::postage_core::__private::FromCall>::from_call(&parts)
                };
                prelude.extend(quote! {
                    let #name = match #take {
                        ::std::result::Result::Ok(value) => value,
                        ::std::result::Result::Err(outcome) => return outcome,
                    };
                });
            }
        }
        args.push(quote_spanned!(arg.span=> #name));
    }
    Arguments {
        prelude,
        args,
        typed,
    }
}

/// At most one argument is the payload: checked where the types are known.
fn payload_check(typed: &[TokenStream], method: &ImplItemFn) -> TokenStream {
    if typed.len() <= 1 {
        return TokenStream::new();
    }
    let counted = typed.iter().map(|ty| {
        let ty = static_lifetimes(ty.clone());
        quote!((<#ty as ::postage_core::__private::FromCall<'static>>::PAYLOAD as usize))
    });
    quote_spanned! {method.sig.ident.span()=>
        const _: () = ::std::assert!(
            0 #(+ #counted)* <= 1,
            "a handler takes one payload argument at most; its other arguments are \
             `&Metadata`, `Reply`, `UserId`, `Deadline` and `State<T>`",
        );
    }
}

/// The payload's schema and the answer's, for the API document (see
/// `postage_core::asyncapi`): each type picks a schema of its own or an open one.
fn schemas(
    typed: &[TokenStream],
    signature: &Signature,
    method: &ImplItemFn,
    self_ty: &Type,
) -> TokenStream {
    let payload_schemas = typed.iter().map(|ty| {
        let ty = static_lifetimes(ty.clone());
        quote! {
            if <#ty as ::postage_core::__private::FromCall<'static>>::PAYLOAD {
                return (&&&::postage_core::__private::SchemaProbe::<#ty>::new()).schema(generator);
            }
        }
    });
    let answer_schema = match (&signature.answer, &method.sig.output) {
        (Answer::Outcome, _) => quote!(::std::option::Option::None),
        (Answer::Rpc, syn::ReturnType::Type(_, ty)) if !names_impl(ty) => {
            let ty = static_lifetimes(replace_self(ty.to_token_stream(), self_ty));
            quote! {
                ::std::option::Option::Some(
                    (&&&::postage_core::__private::SchemaProbe::<#ty>::new()).schema(generator),
                )
            }
        }
        _ => quote!(::std::option::Option::Some(
            ::postage_core::__private::serde_json::json!({})
        )),
    };
    quote! {
        #[allow(unused_imports, clippy::needless_borrow)]
        fn __postage_payload_schema(
            generator: &mut ::postage_core::__private::SchemaGenerator,
        ) -> ::postage_core::__private::serde_json::Value {
            use ::postage_core::__private::{OpenSchema as _, ResultSchema as _, TypedSchema as _};
            #(#payload_schemas)*
            ::postage_core::__private::serde_json::json!({})
        }

        #[allow(unused_imports, unused_variables, clippy::needless_borrow)]
        fn __postage_answer_schema(
            generator: &mut ::postage_core::__private::SchemaGenerator,
        ) -> ::std::option::Option<::postage_core::__private::serde_json::Value> {
            use ::postage_core::__private::{OpenSchema as _, ResultSchema as _, TypedSchema as _};
            #answer_schema
        }
    }
}

/// The shared values the arguments take, for the processor's build to check.
fn states(typed: &[TokenStream]) -> TokenStream {
    let states = typed.iter().map(|ty| {
        let ty = static_lifetimes(ty.clone());
        quote!(<#ty as ::postage_core::__private::FromCall<'static>>::state)
    });
    quote!(&[#(#states),*])
}

/// The method called with `args`, its return value made the call's outcome.
fn answer(signature: &Signature, method: &ImplItemFn, args: &[TokenStream]) -> TokenStream {
    let invoke = invocation(method, args, signature.is_async, signature.output_span);
    match signature.answer {
        Answer::Outcome => outcome_of(&invoke, signature.output_span),
        Answer::Replied => quote_spanned! {signature.output_span=>
            ::postage_core::__private::replied(#invoke)
        },
        // The return type picks its conversion: an `RpcResult`, any `Result` (aliases
        // included), or a plain value (see `postage_core::__private::Probe`).
        Answer::Rpc => quote_spanned! {signature.output_span=>
            #[allow(clippy::needless_borrow)]
            {
                #[allow(unused_imports)]
                use ::postage_core::__private::{RawKind as _, ResultKind as _, ValueKind as _};
                let answer = #invoke;
                let kind = (&&&::postage_core::__private::Probe(&answer)).rpc_kind();
                kind.rpc_outcome(answer)
            }
        },
    }
}

/// The outcome of a method that answers nobody (a message handler's, a timer's).
pub(crate) fn outcome_of(invoke: &TokenStream, span: Span) -> TokenStream {
    quote_spanned! {span=>
        ::postage_core::__private::MessageOutcome::into_outcome(#invoke)
    }
}

/// `tokens` (a type) with every elided or anonymous lifetime made `'static`, to name the
/// type outside the method, in a constant.
fn static_lifetimes(tokens: TokenStream) -> TokenStream {
    let mut out = Vec::new();
    let mut trees = tokens.into_iter().peekable();
    while let Some(tree) = trees.next() {
        match tree {
            TokenTree::Punct(punct) if punct.as_char() == '&' => {
                out.push(TokenTree::Punct(punct));
                let lifetime_follows = matches!(trees.peek(),
                    Some(TokenTree::Punct(next)) if next.as_char() == '\'');
                if !lifetime_follows {
                    out.extend(quote!('static));
                }
            }
            TokenTree::Punct(punct) if punct.as_char() == '\'' => {
                // `'_` or a named lifetime: `'static` instead.
                let _ = trees.next();
                out.extend(quote!('static));
            }
            TokenTree::Group(group) => {
                let mut inner = Group::new(group.delimiter(), static_lifetimes(group.stream()));
                inner.set_span(group.span());
                out.push(TokenTree::Group(inner));
            }
            other => out.push(other),
        }
    }
    out.into_iter().collect()
}

/// Whether `ty` holds an `impl Trait`, which cannot be named outside the method.
fn names_impl(ty: &Type) -> bool {
    ty.to_token_stream()
        .to_string()
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .any(|word| word == "impl")
}

/// `tokens` with every `Self` replaced by `self_ty`, for use outside the impl block.
fn replace_self(tokens: TokenStream, self_ty: &Type) -> TokenStream {
    tokens
        .into_iter()
        .map(|tree| match tree {
            TokenTree::Ident(ident) if ident == "Self" => {
                let mut ty = self_ty.to_token_stream();
                // Keep the user's span, for errors about the argument's type.
                ty = respan(ty, ident.span());
                TokenTree::Group(Group::new(Delimiter::None, ty))
            }
            TokenTree::Group(group) => {
                let mut replaced =
                    Group::new(group.delimiter(), replace_self(group.stream(), self_ty));
                replaced.set_span(group.span());
                TokenTree::Group(replaced)
            }
            other => other,
        })
        .collect()
}

fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// The processor's name for people: its type without the module path, spaced as a person
/// would write it (`Echo` for `super::Echo`, `Pair<(u8, u16)>`). The runtime tells
/// processors apart by `TypeId`; this is only for messages.
pub(crate) fn type_name(ty: &Type) -> String {
    let tokens = match ty {
        Type::Path(path) if path.qself.is_none() => match path.path.segments.last() {
            Some(last) => last.to_token_stream(),
            None => ty.to_token_stream(),
        },
        _ => ty.to_token_stream(),
    };
    let mut name = String::new();
    write_tokens(&mut name, tokens);
    name
}

fn write_tokens(name: &mut String, tokens: TokenStream) {
    let mut previous_word = false;
    for tree in tokens {
        let word = matches!(tree, TokenTree::Ident(_) | TokenTree::Literal(_));
        if word && previous_word {
            name.push(' ');
        }
        previous_word = word;
        match tree {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::None => ("", ""),
                };
                name.push_str(open);
                write_tokens(name, group.stream());
                name.push_str(close);
            }
            TokenTree::Punct(punct) if punct.as_char() == ',' => name.push_str(", "),
            TokenTree::Punct(punct) if punct.as_char() == ';' => name.push_str("; "),
            TokenTree::Punct(punct) if punct.as_char() == '+' => name.push_str(" + "),
            other => name.push_str(&other.to_string()),
        }
    }
}
