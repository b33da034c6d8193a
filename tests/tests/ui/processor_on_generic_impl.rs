use postage_core::processor;

trait Store: Send + Sync {}

struct Inventory<S: Store> {
    store: S,
}

#[processor]
impl<S: Store + 'static> Inventory<S> {
    #[message_handler("command", "restock")]
    fn restock(&self, _sku: String) {
        let _ = &self.store;
    }
}

fn main() {}
