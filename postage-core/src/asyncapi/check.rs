//! Breaking changes between two AsyncAPI documents of postage's: what a sender written
//! against the old one would see fail against the new one.

use serde_json::{Map, Value};

/// How far `$ref`s and nesting are followed (a recursive type ends there).
const DEPTH: usize = 32;

/// The breaking changes from `old` to `new`, each a line that names it: an operation
/// gone; in what a component receives, a field made required or a type changed; in what
/// it answers, a type changed or a field gone. An additive change (an operation, a
/// channel, an optional field) is none.
pub fn breaking_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let operations = |doc: &Value| doc["operations"].as_object().cloned().unwrap_or_default();
    let (old_ops, new_ops) = (operations(old), operations(new));
    for (id, old_op) in &old_ops {
        let Some(new_op) = new_ops.get(id) else {
            found.push(format!("operation {id} is gone"));
            continue;
        };
        let message = |doc: &Value, op: &Value, path: &str| -> Value {
            let reference = op.pointer(path).and_then(Value::as_str).unwrap_or_default();
            let message = resolve(doc, reference);
            message.get("payload").cloned().unwrap_or(Value::Null)
        };
        let schemas = |doc: &Value| {
            doc.pointer("/components/schemas")
                .and_then(Value::as_object)
                .cloned()
        };
        let (old_schemas, new_schemas) = (
            schemas(old).unwrap_or_default(),
            schemas(new).unwrap_or_default(),
        );
        let docs = Docs {
            old: &old_schemas,
            new: &new_schemas,
        };
        docs.compare(
            &message(old, old_op, "/messages/0/$ref"),
            &message(new, new_op, "/messages/0/$ref"),
            &format!("{id}: the message"),
            Flow::Received,
            0,
            &mut found,
        );
        if old_op.get("reply").is_some() {
            if new_op.get("reply").is_none() {
                found.push(format!("{id}: no longer answers"));
            } else {
                docs.compare(
                    &message(old, old_op, "/reply/messages/0/$ref"),
                    &message(new, new_op, "/reply/messages/0/$ref"),
                    &format!("{id}: the answer"),
                    Flow::Sent,
                    0,
                    &mut found,
                );
            }
        }
    }
    found
}

/// Which way a schema's data goes: into the component (a sender must satisfy it) or out
/// of it (a receiver reads it).
#[derive(Clone, Copy, PartialEq)]
enum Flow {
    Received,
    Sent,
}

struct Docs<'a> {
    old: &'a Map<String, Value>,
    new: &'a Map<String, Value>,
}

impl Docs<'_> {
    fn compare(
        &self,
        old: &Value,
        new: &Value,
        path: &str,
        flow: Flow,
        depth: usize,
        found: &mut Vec<String>,
    ) {
        if depth > DEPTH {
            return;
        }
        let old = follow(self.old, old);
        let new = follow(self.new, new);
        if let (Some(a), Some(b)) = (types(old), types(new))
            && a != b
        {
            found.push(format!("{path}: type changed from {a} to {b}"));
            return;
        }
        if let (Some(a), Some(b)) = (old.get("const"), new.get("const"))
            && a != b
        {
            found.push(format!("{path}: changed from {a} to {b}"));
        }
        let required = |schema: &Value| -> Vec<String> {
            schema["required"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        if flow == Flow::Received {
            let before = required(old);
            for field in required(new) {
                if !before.contains(&field) {
                    found.push(format!("{path}: field {field:?} is now required"));
                }
            }
        }
        let properties = |schema: &Value| {
            schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default()
        };
        let (old_props, new_props) = (properties(old), properties(new));
        for (name, old_prop) in &old_props {
            match new_props.get(name) {
                Some(new_prop) => self.compare(
                    old_prop,
                    new_prop,
                    &format!("{path}.{name}"),
                    flow,
                    depth + 1,
                    found,
                ),
                None if flow == Flow::Sent => {
                    found.push(format!("{path}: field {name:?} is gone"));
                }
                None => {}
            }
        }
        if let (Some(a), Some(b)) = (old.get("items"), new.get("items")) {
            self.compare(a, b, &format!("{path}[]"), flow, depth + 1, found);
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            if let (Some(a), Some(b)) = (old[key].as_array(), new[key].as_array()) {
                for (n, (a, b)) in a.iter().zip(b).enumerate() {
                    self.compare(a, b, &format!("{path}({key} {n})"), flow, depth + 1, found);
                }
            }
        }
    }
}

/// A schema with its `$ref` (into `components/schemas`) followed.
fn follow<'a>(schemas: &'a Map<String, Value>, schema: &'a Value) -> &'a Value {
    let mut schema = schema;
    for _ in 0..DEPTH {
        let Some(name) = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix(super::schema::SCHEMAS))
        else {
            break;
        };
        match schemas.get(name) {
            Some(target) => schema = target,
            None => break,
        }
    }
    schema
}

/// What `$ref` names in `doc`: a JSON pointer after the `#`.
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let mut target = doc
        .pointer(reference.trim_start_matches('#'))
        .unwrap_or(&Value::Null);
    // A channel's message refers on to the component's.
    for _ in 0..4 {
        match target.get("$ref").and_then(Value::as_str) {
            Some(next) => {
                target = doc
                    .pointer(next.trim_start_matches('#'))
                    .unwrap_or(&Value::Null)
            }
            None => break,
        }
    }
    target
}

/// A schema's type, as text (`["string","null"]` for several), when it names one.
fn types(schema: &Value) -> Option<String> {
    match schema.get("type")? {
        Value::String(one) => Some(one.clone()),
        Value::Array(many) => {
            let mut names: Vec<&str> = many.iter().filter_map(Value::as_str).collect();
            names.sort_unstable();
            Some(names.join("|"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::asyncapi::{ApiBinding, ApiHandler, Component, Document};
    use crate::wire::Category;

    fn document(order: Value, answer: Value, more: bool) -> Value {
        let mut handlers = vec![ApiHandler {
            category: Category::Rpc,
            kind: "command".into(),
            name: "reserve".into(),
            method: "reserve".into(),
            payload: json!({"$ref": "#/components/schemas/Order"}),
            answer: Some(answer),
        }];
        if more {
            handlers.push(ApiHandler {
                category: Category::Message,
                kind: "command".into(),
                name: "restock".into(),
                method: "restock".into(),
                payload: json!({"type": "string"}),
                answer: None,
            });
        }
        let component = Component {
            name: "shop".into(),
            bindings: vec![ApiBinding {
                exchange: "shop-exchange".into(),
                exchange_type: "direct".into(),
                durable: true,
                routing_key: "shop".into(),
                queue: "shop-queue".into(),
            }],
            handlers,
            schemas: [("Order".to_owned(), order)].into_iter().collect(),
        };
        Document::new("Shop", "1").component(component).to_json()
    }

    fn order(required: &[&str], quantity: &str) -> Value {
        json!({
            "type": "object",
            "required": required,
            "properties": {"sku": {"type": "string"}, "quantity": {"type": quantity}},
        })
    }

    #[test]
    fn each_breaking_change_is_caught_and_an_additive_one_passes() {
        let saved = document(order(&["sku"], "integer"), json!({"type": "boolean"}), true);
        assert_eq!(breaking_changes(&saved, &saved), Vec::<String>::new());
        // Additive: a new operation, a new optional field.
        let mut grown = order(&["sku"], "integer");
        grown["properties"]["note"] = json!({"type": "string"});
        let additive = document(grown, json!({"type": "boolean"}), true);
        assert_eq!(breaking_changes(&saved, &additive), Vec::<String>::new());
        assert_eq!(
            breaking_changes(
                &document(
                    order(&["sku"], "integer"),
                    json!({"type": "boolean"}),
                    false
                ),
                &saved
            ),
            Vec::<String>::new()
        );

        let gone = document(
            order(&["sku"], "integer"),
            json!({"type": "boolean"}),
            false,
        );
        let found = breaking_changes(&saved, &gone);
        assert!(
            found.len() == 1 && found[0].contains("is gone"),
            "{found:?}"
        );

        let required = document(
            order(&["sku", "quantity"], "integer"),
            json!({"type": "boolean"}),
            true,
        );
        let found = breaking_changes(&saved, &required);
        assert!(
            found.len() == 1 && found[0].contains("\"quantity\" is now required"),
            "{found:?}"
        );

        let retyped = document(order(&["sku"], "string"), json!({"type": "boolean"}), true);
        let found = breaking_changes(&saved, &retyped);
        assert!(
            found.len() == 1 && found[0].contains("type changed from integer to string"),
            "{found:?}"
        );

        let answer = document(order(&["sku"], "integer"), json!({"type": "integer"}), true);
        let found = breaking_changes(&saved, &answer);
        assert!(
            found.len() == 1 && found[0].contains("the answer"),
            "{found:?}"
        );
    }
}
