//! The `#[message_handler(...)]` and `#[rpc_handler(...)]` markers: what their arguments
//! say, and the error when one is used outside a `#[processor]` impl block.

use proc_macro2::{Span, TokenStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Error, Expr, ExprLit, ExprPath, Ident, Lit, LitInt, LitStr, Meta, Token};

use crate::{Errors, Failure};

/// The `type` every RPC handler answers.
const COMMAND: &str = "command";

/// Whether `attr` is postage's marker `name`: written bare, as imported from postage
/// (`#[timer]`), or through the crate (`#[postage_core::timer]`, `#[::postage::timer]`).
/// Another crate's attribute of the same name (`#[other::timer]`) is left alone.
pub(crate) fn is_postage(attr: &Attribute, name: &str) -> bool {
    let path = attr.path();
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    match segments.as_slice() {
        [only] => path.leading_colon.is_none() && only == name,
        [krate, last] => (krate == "postage_core" || krate == "postage") && last == name,
        _ => false,
    }
}

/// Which marker: fire-and-forget or RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    Message,
    Rpc,
}

impl Category {
    /// The category of `attr` if it is one of the markers (see [`is_postage`]).
    pub(crate) fn of(attr: &Attribute) -> Option<Self> {
        if is_postage(attr, "message_handler") {
            Some(Self::Message)
        } else if is_postage(attr, "rpc_handler") {
            Some(Self::Rpc)
        } else {
            None
        }
    }

    /// The marker's name, for messages.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Self::Message => "message_handler",
            Self::Rpc => "rpc_handler",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Self::Message => "#[message_handler(\"command\", \"echo\")]",
            Self::Rpc => "#[rpc_handler(\"command\", \"sum\")]",
        }
    }
}

/// What one marker says.
pub(crate) struct Marker {
    pub(crate) category: Category,
    /// Where the marker is, for the registration's location.
    pub(crate) span: Span,
    /// The message `type`.
    pub(crate) kind: LitStr,
    pub(crate) name: LitStr,
    /// The `full_body` flag, when given.
    pub(crate) full_body: Option<Ident>,
    pub(crate) filters: Vec<ExprPath>,
    /// `attempts = N`: at most N tries of one message.
    pub(crate) attempts: Option<LitInt>,
    /// `timeout = "5s"`, in milliseconds.
    pub(crate) timeout: Option<u64>,
}

impl Marker {
    /// Reads the arguments of `attr`, a marker of `category`.
    pub(crate) fn parse(category: Category, attr: &Attribute) -> syn::Result<Self> {
        let missing = || {
            Error::new_spanned(
                attr,
                format!(
                    "expected the message type and name, as in {}",
                    category.usage()
                ),
            )
        };
        let Meta::List(list) = &attr.meta else {
            return Err(missing());
        };
        let args = list.parse_args_with(Punctuated::<Expr, Token![,]>::parse_terminated)?;

        let mut errors = Errors::default();
        let mut args = args.into_iter();
        let (kind, name) = match (args.next(), args.next()) {
            (Some(kind), Some(name)) => (
                errors.take(string(kind, "the message type, such as \"command\"")),
                errors.take(string(name, "the handler name, such as \"echo\"")),
            ),
            _ => return Err(missing()),
        };
        if let Some(kind) = &kind {
            if kind.value().is_empty() {
                errors.push(Error::new_spanned(kind, "the message type cannot be empty"));
            } else if category == Category::Rpc && kind.value() != COMMAND {
                errors.push(Error::new_spanned(
                    kind,
                    "rpc handlers answer only \"command\" messages",
                ));
            }
        }
        if let Some(name) = &name
            && name.value().is_empty()
        {
            errors.push(Error::new_spanned(name, "the handler name cannot be empty"));
        }

        let mut full_body = None;
        let mut filters = Vec::new();
        let (mut attempts, mut timeout) = (None, None);
        for arg in args {
            match Setting::read(arg) {
                Ok(Setting::FullBody(flag)) => {
                    if category == Category::Rpc {
                        errors.push(Error::new_spanned(
                            &flag,
                            "`full_body` applies only to #[message_handler]; \
                             an rpc handler's payload is the command's parameters",
                        ));
                    } else if full_body.is_some() {
                        errors.push(Error::new_spanned(&flag, "`full_body` is given twice"));
                    } else {
                        full_body = Some(flag);
                    }
                }
                Ok(Setting::Filter(path)) => filters.push(path),
                Ok(Setting::Attempts(n)) if category == Category::Rpc => {
                    errors.push(Error::new_spanned(
                        n,
                        "`attempts` applies only to #[message_handler]; an rpc caller retries \
                         a call itself",
                    ))
                }
                Ok(Setting::Attempts(n)) => attempts = Some(n),
                Ok(Setting::Timeout(ms)) => timeout = Some(ms),
                Err(error) => errors.push(error),
            }
        }

        errors.finish()?;
        let (Some(kind), Some(name)) = (kind, name) else {
            // Not reached: a type or name that is not a string was reported above.
            return Err(missing());
        };
        Ok(Self {
            category,
            span: attr.path().span(),
            kind,
            name,
            full_body,
            filters,
            attempts,
            timeout,
        })
    }
}

/// A string literal argument, or an error saying it should have been `what`.
fn string(arg: Expr, what: &str) -> syn::Result<LitStr> {
    match arg {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit),
        other => Err(Error::new_spanned(
            other,
            format!("expected {what} as a string literal"),
        )),
    }
}

/// One option after the type and name.
enum Setting {
    FullBody(Ident),
    Filter(ExprPath),
    Attempts(LitInt),
    /// In milliseconds.
    Timeout(u64),
}

impl Setting {
    const EXPECTED: &str =
        "expected `full_body`, `filter = path::to_fn`, `attempts = 3` or `timeout = \"30s\"`";

    fn read(arg: Expr) -> syn::Result<Self> {
        match arg {
            Expr::Path(path) if path.attrs.is_empty() && path.qself.is_none() => {
                match path.path.get_ident() {
                    Some(ident) if ident == "full_body" => Ok(Self::FullBody(ident.clone())),
                    Some(ident) => Err(Error::new_spanned(
                        ident,
                        format!("unknown flag `{ident}`; {}", Self::EXPECTED),
                    )),
                    None => Err(Error::new_spanned(path, Self::EXPECTED)),
                }
            }
            Expr::Assign(assign) => {
                let option = match &*assign.left {
                    Expr::Path(left) => left.path.get_ident().map(ToString::to_string),
                    _ => None,
                };
                match option.as_deref() {
                    Some("filter") => {}
                    Some("attempts") => return attempts(*assign.right),
                    Some("timeout") => return timeout(*assign.right),
                    _ => {
                        return Err(Error::new_spanned(
                            &assign.left,
                            format!("unknown option; {}", Self::EXPECTED),
                        ));
                    }
                }
                match *assign.right {
                    Expr::Path(path) if path.attrs.is_empty() => Ok(Self::Filter(path)),
                    other => Err(Error::new_spanned(
                        other,
                        "expected the path of a filter function, such as `filters::only_admins`",
                    )),
                }
            }
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => Err(Error::new_spanned(
                lit,
                "unexpected string: the message type and name come first, once",
            )),
            other => Err(Error::new_spanned(other, Self::EXPECTED)),
        }
    }
}

/// `attempts = N`, N at least 1.
fn attempts(value: Expr) -> syn::Result<Setting> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(n), ..
        }) if n.base10_parse::<u32>().is_ok_and(|n| n >= 1) => Ok(Setting::Attempts(n)),
        other => Err(Error::new_spanned(
            other,
            "expected the number of attempts, at least 1, such as `attempts = 3`",
        )),
    }
}

/// `timeout = "30s"`: a number and a unit, `ms`, `s` or `m`.
fn timeout(value: Expr) -> syn::Result<Setting> {
    duration_ms(value, "timeout").map(Setting::Timeout)
}

/// A duration written `"30s"` (a number and a unit, `ms`, `s` or `m`) as the value of
/// option `option`, in milliseconds.
pub(crate) fn duration_ms(value: Expr, option: &str) -> syn::Result<u64> {
    let expected = format!("expected a duration such as `{option} = \"30s\"` (units ms, s, m)");
    let Expr::Lit(ExprLit {
        lit: Lit::Str(text),
        ..
    }) = value
    else {
        return Err(Error::new_spanned(value, expected));
    };
    let written = text.value();
    let digits = written.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let scale = match &written[digits.len()..] {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        _ => return Err(Error::new_spanned(text, expected)),
    };
    match digits.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n.saturating_mul(scale)),
        _ => Err(Error::new_spanned(text, expected)),
    }
}

/// A marker seen on its own: there is no `#[processor]` around it to read it.
pub(crate) fn expand(category: Category, item: TokenStream) -> Result<TokenStream, Failure> {
    Err(Failure {
        error: Error::new(
            Span::call_site(),
            format!(
                "#[{}] must be inside an impl block marked #[processor]",
                category.attribute()
            ),
        ),
        item,
    })
}
