use postage_core::processor;

struct Stock;

#[processor]
impl Stock {
    #[message_handler("command", "restock")]
    fn restock(&self, sku: String) -> u32 {
        let _ = sku;
        3
    }
}

fn main() {}
