use postage_core::processor;

struct Stock;

/// Not a payload (no `Deserialize`), nor anything else a handler is given.
struct Warehouse;

#[processor]
impl Stock {
    #[message_handler("command", "restock")]
    fn restock(&self, sku: &str, warehouse: Warehouse) {
        let _ = (sku, warehouse);
    }
}

fn main() {}
