//! `#[timer(every = "30s")]` inside a `#[processor]` impl block: a method the processor
//! runs every period while it runs.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Error, Expr, FnArg, ImplItemFn, Meta, ReturnType, Token, Type};

use crate::marker::{duration_ms, is_postage};
use crate::registration::{cfgs, invocation, location, outcome_of, wrapped};
use crate::{Errors, Failure};

/// Whether `attr` is postage's `#[timer(...)]` marker (see [`is_postage`]).
pub(crate) fn is_timer(attr: &Attribute) -> bool {
    is_postage(attr, "timer")
}

/// The period of a `#[timer(every = "30s")]` marker, in milliseconds.
fn period(attr: &Attribute) -> syn::Result<u64> {
    const USAGE: &str = "expected the period, as in #[timer(every = \"30s\")]";
    let Meta::List(list) = &attr.meta else {
        return Err(Error::new_spanned(attr, USAGE));
    };
    let args = list.parse_args_with(Punctuated::<Expr, Token![,]>::parse_terminated)?;
    let mut args = args.into_iter();
    match (args.next(), args.next()) {
        (Some(Expr::Assign(assign)), None) if matches!(&*assign.left, Expr::Path(left) if left.path.is_ident("every")) => {
            duration_ms(*assign.right, "every")
        }
        _ => Err(Error::new_spanned(list, USAGE)),
    }
}

/// The registration of `method` as a timer of `self_ty`, or what is wrong with it.
pub(crate) fn registration(
    self_ty: &Type,
    method: &ImplItemFn,
    attr: &Attribute,
    processor_name: &str,
) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let every = errors.take(period(attr));
    let sig = &method.sig;
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        _ => errors.push(Error::new_spanned(
            &sig.ident,
            "a timer is a method taking `&self`",
        )),
    }
    if let Some(extra) = inputs.next() {
        errors.push(Error::new_spanned(
            extra,
            "a timer takes only `&self`: nothing comes with a tick",
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(Error::new_spanned(
            &sig.generics,
            "a timer cannot be generic",
        ));
    }
    errors.finish()?;
    let Some(every) = every else {
        return Err(Error::new(Span::call_site(), "unreachable"));
    };

    let name = &sig.ident;
    let output_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => name.span(),
    };
    let invoke = invocation(method, &[], sig.asyncness.is_some(), output_span);
    let body = wrapped(self_ty, name.span(), outcome_of(&invoke, output_span));
    let method_name = name.to_string();
    let location = location(attr.span());
    let cfgs = cfgs(method);
    Ok(quote! {
        #(#cfgs)*
        const _: () = {
            fn __postage_tick(
                processor: ::std::sync::Arc<
                    dyn ::std::any::Any + ::std::marker::Send + ::std::marker::Sync,
                >,
            ) -> ::postage_core::__private::BoxFuture<::postage_core::__private::Outcome> {
                #body
            }

            ::postage_core::__private::inventory::submit! {
                ::postage_core::__private::TimerRegistration {
                    processor: || ::std::any::TypeId::of::<#self_ty>(),
                    processor_name: #processor_name,
                    method: #method_name,
                    location: #location,
                    every: ::std::time::Duration::from_millis(#every),
                    call: __postage_tick,
                }
            }
        };
    })
}

/// A `#[timer]` seen on its own: there is no `#[processor]` around it to read it.
pub(crate) fn expand(item: TokenStream) -> Result<TokenStream, Failure> {
    Err(Failure {
        error: Error::new(
            Span::call_site(),
            "#[timer] must be inside an impl block marked #[processor]",
        ),
        item,
    })
}
