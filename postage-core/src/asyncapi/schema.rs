//! The JSON Schemas of handlers' payloads and answers, from their Rust types: through
//! `schemars` where the type derives `JsonSchema`, an open schema (`{}`) otherwise. The
//! handler attributes pick which by the type (autoref specialization), so a handler
//! whose type has no schema compiles all the same.

use std::marker::PhantomData;

use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Value, json};

/// Where subschemas go in an AsyncAPI document, and how `$ref`s name them.
pub(crate) const SCHEMAS: &str = "#/components/schemas/";

/// A generator whose definitions belong in an AsyncAPI document's `components/schemas`,
/// as draft-07 JSON Schema (AsyncAPI's default schema format).
pub(crate) fn generator() -> SchemaGenerator {
    let mut settings = SchemaSettings::draft07();
    settings.definitions_path = SCHEMAS.into();
    settings.meta_schema = None;
    settings.into_generator()
}

/// Stands for the type `T` while the attributes pick how to describe it.
#[doc(hidden)]
#[derive(Debug)]
pub struct SchemaProbe<T: ?Sized>(PhantomData<T>);

impl<T: ?Sized> SchemaProbe<T> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

/// A payload or an answer whose type describes itself.
#[doc(hidden)]
pub trait TypedSchema {
    fn schema(&self, generator: &mut SchemaGenerator) -> Value;
}

/// Any other: an open schema.
#[doc(hidden)]
pub trait OpenSchema {
    fn schema(&self, generator: &mut SchemaGenerator) -> Value;
}

/// An answer `Result<T, E>`: `T`'s schema (the error goes out as an error result).
#[doc(hidden)]
pub trait ResultSchema {
    fn schema(&self, generator: &mut SchemaGenerator) -> Value;
}

impl<T: JsonSchema, E> ResultSchema for &&SchemaProbe<Result<T, E>> {
    fn schema(&self, generator: &mut SchemaGenerator) -> Value {
        generator.subschema_for::<T>().to_value()
    }
}

impl<T: JsonSchema + ?Sized> TypedSchema for &SchemaProbe<T> {
    fn schema(&self, generator: &mut SchemaGenerator) -> Value {
        generator.subschema_for::<T>().to_value()
    }
}

impl<T: ?Sized> OpenSchema for SchemaProbe<T> {
    fn schema(&self, _: &mut SchemaGenerator) -> Value {
        json!({})
    }
}

#[cfg(test)]
// The borrows pick the impl: the point of the probe.
#[allow(clippy::needless_borrow)]
mod tests {
    use super::*;

    #[derive(JsonSchema, serde::Deserialize)]
    #[allow(dead_code)]
    struct Order {
        sku: String,
        quantity: Option<u32>,
    }

    struct Opaque;

    #[test]
    fn a_type_that_derives_a_schema_has_it_and_any_other_an_open_one() {
        let mut generator = generator();
        let order = (&&&SchemaProbe::<Order>::new()).schema(&mut generator);
        assert_eq!(order, json!({"$ref": "#/components/schemas/Order"}));
        let defs = generator.take_definitions(true);
        assert_eq!(defs["Order"]["required"], json!(["sku"]));
        assert_eq!(
            (&&&SchemaProbe::<Opaque>::new()).schema(&mut generator),
            json!({})
        );
        let answer = (&&&SchemaProbe::<Result<u32, String>>::new()).schema(&mut generator);
        assert_eq!(answer["type"], "integer");
        let text = (&&&SchemaProbe::<&str>::new()).schema(&mut generator);
        assert_eq!(text, json!({"type": "string"}));
    }
}
