//! What a handler method takes and returns: its arguments are recognised by type where
//! the handler is compiled (`FromCall`); here only what the signature alone decides
//! (`&self`, the `Reply` that makes an rpc handler answer through it, `full_body`).

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Error, FnArg, Ident, Receiver, ReturnType, Type};

use crate::Errors;
use crate::marker::Category;

/// One argument after `&self`.
pub(crate) enum Role {
    /// Taken from the call by its type (`FromCall`): the payload, `&Metadata`,
    /// `UserId`, `Deadline`.
    Typed(Box<Type>),
    /// The whole message, with `full_body`.
    FullBody,
    /// The RPC reply handle, which also makes the handler answer through it.
    Reply,
}

/// One argument and where it is written, for errors about its type.
pub(crate) struct Arg {
    pub(crate) role: Role,
    pub(crate) span: Span,
}

/// How the method's return value becomes the runtime's outcome; which conversion
/// applies within each is decided by the return type, in the generated code.
pub(crate) enum Answer {
    /// A message handler: `()`, a `Disposition`, or a `Result` of either.
    Outcome,
    /// An RPC handler returning its answer: a value, a `Result` or an `RpcResult`.
    Rpc,
    /// An RPC handler that answered through its reply handle.
    Replied,
}

/// A handler method, classified.
pub(crate) struct Signature {
    pub(crate) is_async: bool,
    /// The arguments after `&self`, in declared order.
    pub(crate) args: Vec<Arg>,
    pub(crate) answer: Answer,
    /// Where the return type is written (or the signature, without one).
    pub(crate) output_span: Span,
}

impl Signature {
    /// Classifies `sig` as a handler of `category` (given the marker's `full_body` flag),
    /// or says everything wrong with it.
    pub(crate) fn classify(
        sig: &syn::Signature,
        category: Category,
        full_body: Option<&Ident>,
    ) -> syn::Result<Self> {
        let mut errors = Errors::default();
        let rpc = category == Category::Rpc;

        if let Some(unsafety) = &sig.unsafety {
            errors.push(Error::new_spanned(
                unsafety,
                "a handler cannot be an unsafe fn",
            ));
        }
        if let Some(abi) = &sig.abi {
            errors.push(Error::new_spanned(
                abi,
                "a handler cannot have an extern ABI",
            ));
        }
        if !sig.generics.params.is_empty() {
            errors.push(Error::new_spanned(
                &sig.generics,
                "a handler cannot be generic: the message decides its argument types",
            ));
        } else if let Some(where_clause) = &sig.generics.where_clause {
            errors.push(Error::new_spanned(
                where_clause,
                "a handler cannot have a where clause",
            ));
        }

        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(receiver)) => {
                if let Err(error) = check_receiver(receiver) {
                    errors.push(error);
                }
            }
            Some(FnArg::Typed(arg)) => errors.push(Error::new_spanned(
                arg,
                "a handler is a method: its first argument is `&self`",
            )),
            None => errors.push(Error::new_spanned(
                &sig.ident,
                "a handler is a method: its first argument is `&self`",
            )),
        }

        let mut args = Vec::new();
        let mut reply = false;
        for input in inputs {
            // A receiver after the first argument is a syntax error syn already reports.
            let FnArg::Typed(arg) = input else { continue };
            let span = arg.ty.span();
            let role = match peel(&arg.ty) {
                Type::Reference(reference) if reference.mutability.is_some() => {
                    errors.push(Error::new_spanned(
                        &arg.ty,
                        "a handler cannot take `&mut` arguments; \
                         the metadata is borrowed as `&Metadata`",
                    ));
                    continue;
                }
                Type::ImplTrait(_) => {
                    errors.push(Error::new_spanned(
                        &arg.ty,
                        "a handler cannot be generic: name the argument's type",
                    ));
                    continue;
                }
                // The reply handle: it also decides how the handler answers.
                ty if names_reply(ty) => {
                    if !rpc {
                        errors.push(Error::new_spanned(
                            &arg.ty,
                            "a message handler has no `Reply`: only an rpc handler answers",
                        ));
                        continue;
                    }
                    if reply {
                        errors.push(Error::new_spanned(&arg.ty, "a handler takes one `Reply`"));
                        continue;
                    }
                    reply = true;
                    Role::Reply
                }
                // With `full_body`, the first argument that is neither a reference nor
                // the `Reply` is the whole message.
                Type::Path(_)
                    if full_body.is_some()
                        && !args.iter().any(|a: &Arg| matches!(a.role, Role::FullBody)) =>
                {
                    Role::FullBody
                }
                // Anything else is recognised by its type, where the handler is compiled.
                _ => Role::Typed(arg.ty.clone()),
            };
            args.push(Arg { role, span });
        }

        if let Some(flag) = full_body
            && !args.iter().any(|a| matches!(a.role, Role::FullBody))
        {
            errors.push(Error::new_spanned(
                flag,
                "`full_body` hands the whole `Message` to the handler, \
                 but this method takes no argument for it",
            ));
        }

        let replies = args.iter().any(|arg| matches!(arg.role, Role::Reply));
        let output_span = match &sig.output {
            ReturnType::Type(_, ty) => ty.span(),
            ReturnType::Default => sig.ident.span(),
        };
        let answer = match category {
            Category::Message => Answer::Outcome,
            Category::Rpc if replies => Answer::Replied,
            Category::Rpc => {
                if !returns_something(&sig.output) {
                    errors.push(Error::new_spanned(
                        &sig.ident,
                        "an rpc handler returns its answer, or takes a Reply",
                    ));
                }
                Answer::Rpc
            }
        };

        errors.finish()?;
        Ok(Self {
            is_async: sig.asyncness.is_some(),
            args,
            answer,
            output_span,
        })
    }
}

/// Accepts `&self` (or `self: &Self`), the only receiver a shared processor can offer.
fn check_receiver(receiver: &Receiver) -> syn::Result<()> {
    match peel(&receiver.ty) {
        Type::Reference(reference) if reference.mutability.is_none() => Ok(()),
        Type::Reference(_) => Err(Error::new_spanned(
            receiver,
            "a handler takes `&self`, not `&mut self`: \
             handlers run concurrently on a shared processor",
        )),
        _ => Err(Error::new_spanned(
            receiver,
            "a handler takes `&self`, not `self` by value: the processor is shared by every call",
        )),
    }
}

/// Whether the method returns something other than `()`.
fn returns_something(output: &ReturnType) -> bool {
    match output {
        ReturnType::Default => false,
        ReturnType::Type(_, ty) => {
            !matches!(peel(ty), Type::Tuple(tuple) if tuple.elems.is_empty())
        }
    }
}

/// `ty` without the parentheses and invisible groups (from `macro_rules!`) around it.
fn peel(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Paren(inner) => ty = &inner.elem,
            Type::Group(inner) => ty = &inner.elem,
            _ => return ty,
        }
    }
}

/// True for a type written `Reply` or `some::path::Reply`.
fn names_reply(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none()
        && path.path.segments.last().is_some_and(|s| s.ident == "Reply" && s.arguments.is_none()))
}
