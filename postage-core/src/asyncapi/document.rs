//! What a component answers to, and the AsyncAPI document of several.

use std::any::TypeId;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::schema::generator;
use crate::handler::HandlerRegistration;
use crate::topology::{Binding, Exchange, Queue};
use crate::wire::{COMMAND, Category};

/// One binding a component reads: an exchange, a routing key, the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiBinding {
    /// The exchange's name.
    pub exchange: String,
    /// The exchange's type: `direct`, `fanout`, `topic` or `headers`.
    pub exchange_type: String,
    /// Whether the exchange is durable.
    pub durable: bool,
    /// The routing key.
    pub routing_key: String,
    /// The queue's name (empty for one the broker names).
    pub queue: String,
}

/// One handler: what it answers to, and the schemas of its payload and answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiHandler {
    /// Fire-and-forget or RPC.
    pub category: Category,
    /// The message type, such as `command`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The message name.
    pub name: String,
    /// The method that handles it.
    pub method: String,
    /// The JSON Schema of its payload (a command's `parameters`).
    pub payload: Value,
    /// The JSON Schema of an RPC handler's answer (a success's `value`).
    pub answer: Option<Value>,
}

/// What one component answers to: its bindings and its handlers, with the schemas their
/// payloads refer to. Serializable, so a running component can tell it (`describe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// The component's name (its fingerprint name, say).
    pub name: String,
    /// Where it reads its messages.
    pub bindings: Vec<ApiBinding>,
    /// What it handles.
    pub handlers: Vec<ApiHandler>,
    /// The schemas the payloads and answers refer to (`#/components/schemas/NAME`).
    pub schemas: BTreeMap<String, Value>,
}

impl Component {
    /// The handlers the `#[processor]` impl blocks of `P` register, without bindings yet.
    pub fn of<P: 'static>(name: impl Into<String>) -> Self {
        let id = TypeId::of::<P>();
        Self::from_registrations(
            name,
            inventory::iter::<HandlerRegistration>().filter(|r| (r.processor)() == id),
        )
    }

    pub(crate) fn from_registrations<'a>(
        name: impl Into<String>,
        registrations: impl Iterator<Item = &'a HandlerRegistration>,
    ) -> Self {
        let mut generator = generator();
        let mut handlers: Vec<ApiHandler> = registrations
            .map(|r| ApiHandler {
                category: r.category,
                kind: r.kind.to_owned(),
                name: r.name.to_owned(),
                method: r.method.to_owned(),
                payload: (r.payload_schema)(&mut generator),
                answer: (r.answer_schema)(&mut generator),
            })
            .collect();
        handlers.sort_by(|a, b| (&a.kind, &a.name, &a.method).cmp(&(&b.kind, &b.name, &b.method)));
        Self {
            name: name.into(),
            bindings: Vec::new(),
            handlers,
            schemas: generator.take_definitions(true).into_iter().collect(),
        }
    }

    /// Adds a binding it reads: `queue` bound to `exchange` with `routing_key`.
    #[must_use]
    pub fn bind(mut self, exchange: Exchange, queue: impl Into<Queue>, routing_key: &str) -> Self {
        self.bindings.push(api_binding(&Binding {
            exchange,
            queue: queue.into(),
            routing_key: routing_key.to_owned(),
        }));
        self
    }

    /// Adds the bindings a consumer reads.
    #[must_use]
    pub fn with_bindings(mut self, bindings: &[Binding]) -> Self {
        self.bindings.extend(bindings.iter().map(api_binding));
        self
    }
}

fn api_binding(binding: &Binding) -> ApiBinding {
    ApiBinding {
        exchange: binding.exchange.name().to_owned(),
        exchange_type: format!("{:?}", binding.exchange.exchange_kind()).to_lowercase(),
        durable: binding.exchange.is_durable(),
        routing_key: binding.routing_key.clone(),
        queue: binding.queue.name().to_owned(),
    }
}

/// An AsyncAPI 3.0 document of components.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    title: String,
    version: String,
    components: Vec<Component>,
}

impl Document {
    /// A document titled `title`, of the API's version `version`.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            components: Vec::new(),
        }
    }

    /// Adds a component (two of one name, as instances of one program, count once).
    #[must_use]
    pub fn component(mut self, component: Component) -> Self {
        if !self.components.iter().any(|c| c.name == component.name) {
            self.components.push(component);
        }
        self
    }

    /// The document, as JSON (which is also YAML).
    pub fn to_json(&self) -> Value {
        let mut channels = Map::new();
        let mut operations = Map::new();
        let mut messages = Map::new();
        let mut schemas = Map::new();
        let mut replies = false;
        for component in &self.components {
            schemas.extend(component.schemas.clone());
            for handler in &component.handlers {
                let id = message_id(handler);
                messages.insert(id.clone(), request_message(handler));
                if let Some(answer) = &handler.answer {
                    messages.insert(format!("{id}.reply"), reply_message(handler, answer));
                    replies = true;
                }
            }
            for binding in &component.bindings {
                let channel_id = channel_id(binding);
                let channel = channels
                    .entry(channel_id.clone())
                    .or_insert_with(|| channel(binding));
                for handler in &component.handlers {
                    let id = message_id(handler);
                    channel["messages"][&id] =
                        json!({"$ref": format!("#/components/messages/{id}")});
                    let operation_id = sanitize(&format!(
                        "{}.{}.{}",
                        component.name, handler.method, channel_id
                    ));
                    operations.insert(operation_id, operation(handler, &channel_id, &id));
                }
            }
        }
        if replies {
            let mut reply_messages = Map::new();
            for id in messages.keys().filter(|id| id.ends_with(".reply")) {
                reply_messages.insert(
                    id.clone(),
                    json!({"$ref": format!("#/components/messages/{id}")}),
                );
            }
            channels.insert(
                "replies".to_owned(),
                json!({
                    "address": null,
                    "description": "The caller's reply queue, named by the request's AMQP reply_to (RabbitMQ's direct reply-to by default).",
                    "messages": reply_messages,
                }),
            );
        }
        json!({
            "asyncapi": "3.0.0",
            "info": {
                "title": self.title,
                "version": self.version,
                "description": "Generated by postage from its handler registry: Postage messages over AMQP 0-9-1 (RabbitMQ).",
            },
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
            "components": {
                "messages": messages,
                "schemas": schemas,
            },
        })
    }
}

/// An id that needs no escaping in a JSON pointer.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn channel_id(binding: &ApiBinding) -> String {
    sanitize(&format!("{}.{}", binding.exchange, binding.routing_key))
}

fn message_id(handler: &ApiHandler) -> String {
    sanitize(&format!(
        "{}.{}.{}",
        handler.category.as_str(),
        handler.kind,
        handler.name
    ))
}

fn channel(binding: &ApiBinding) -> Value {
    let scheduled = format!("{}.*", crate::delay::scheduled_prefix(&binding.exchange));
    json!({
        "address": binding.routing_key,
        "description": format!("Routing key {:?} of exchange {:?}, read from queue {:?}. A message scheduled for later (Producer::command_after or command_at, postage send --after or --at) waits in a delay queue {scheduled} and reaches the exchange with this routing key when due.", binding.routing_key, binding.exchange, binding.queue),
        "x-postage-scheduled": scheduled,
        "messages": {},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {
                    "name": binding.exchange,
                    "type": binding.exchange_type,
                    "durable": binding.durable,
                    "autoDelete": false,
                    "vhost": "/",
                },
                "bindingVersion": "0.3.0",
            },
        },
    })
}

fn operation(handler: &ApiHandler, channel_id: &str, message_id: &str) -> Value {
    let mut operation = json!({
        "action": "receive",
        "summary": format!("{} {} {:?}, handled by {}", handler.category.as_str(), handler.kind, handler.name, handler.method),
        "channel": {"$ref": format!("#/channels/{channel_id}")},
        "messages": [{"$ref": format!("#/channels/{channel_id}/messages/{message_id}")}],
    });
    if handler.answer.is_some() {
        operation["reply"] = json!({
            "address": {
                "location": "$message.header#/reply_to",
                "description": "The AMQP reply_to property of the request.",
            },
            "channel": {"$ref": "#/channels/replies"},
            "messages": [{"$ref": format!("#/channels/replies/messages/{message_id}.reply")}],
        });
    }
    operation
}

/// The envelope every Postage message shares.
fn envelope(kind: Value, name: Value, category: &str, content: Value) -> Value {
    json!({
        "type": "object",
        "required": ["type", "name", "category", "content"],
        "properties": {
            "type": kind,
            "name": name,
            "category": {"const": category},
            "version": {"type": "string"},
            "fingerprint": {
                "type": "object",
                "description": "Who sent it: name, type, pid, host, user, vhost.",
                "additionalProperties": {"type": "string"},
            },
            "content": content,
        },
    })
}

fn request_message(handler: &ApiHandler) -> Value {
    let content = if handler.kind == COMMAND {
        json!({
            "type": "object",
            "required": ["parameters"],
            "properties": {"parameters": handler.payload},
        })
    } else {
        handler.payload.clone()
    };
    json!({
        "name": format!("{}.{}", handler.kind, handler.name),
        "title": format!("{} {:?}", handler.kind, handler.name),
        "contentType": "application/json",
        "payload": envelope(
            json!({"const": handler.kind}),
            json!({"const": handler.name}),
            handler.category.as_str(),
            content,
        ),
    })
}

fn reply_message(handler: &ApiHandler, answer: &Value) -> Value {
    json!({
        "name": format!("{}.{}.reply", handler.kind, handler.name),
        "title": format!("The answer to {:?}", handler.name),
        "contentType": "application/json",
        "payload": envelope(
            json!({"const": "result"}),
            json!({"type": "string"}),
            Category::Message.as_str(),
            json!({
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["type", "value"],
                        "properties": {
                            "type": {"const": "success"},
                            "value": answer,
                            "message": {"type": ["string", "null"]},
                        },
                    },
                    {
                        "type": "object",
                        "required": ["type", "message"],
                        "properties": {
                            "type": {"enum": ["error", "exception"]},
                            "value": {"type": ["string", "null"], "description": "An exception's kind."},
                            "message": {"type": "string"},
                        },
                    },
                ],
            }),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_channel_names_where_its_scheduled_messages_wait() {
        let component = Component {
            name: "worker".to_owned(),
            bindings: Vec::new(),
            handlers: Vec::new(),
            schemas: BTreeMap::new(),
        }
        .bind(Exchange::new("jobs-exchange"), "jobs", "job")
        .bind(Exchange::DEFAULT, "direct", "direct");
        let document = Document::new("t", "1").component(component).to_json();
        let channels = &document["channels"];
        assert_eq!(
            channels["jobs-exchange.job"]["x-postage-scheduled"],
            "postage.scheduled.jobs-exchange.*"
        );
        assert_eq!(
            channels[".direct"]["x-postage-scheduled"],
            "postage.scheduled.amq.default.*"
        );
        let description = channels["jobs-exchange.job"]["description"]
            .as_str()
            .unwrap();
        assert!(description.contains("command_after"), "{description}");
    }
}
