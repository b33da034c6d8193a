use postage_core::processor;

struct Stock;

/// Not `Serialize`: cannot be sent as an answer.
struct Level(u32);

#[processor]
impl Stock {
    #[rpc_handler("command", "level")]
    fn level(&self, sku: String) -> Result<Level, String> {
        let _ = sku;
        Ok(Level(3))
    }
}

fn main() {}
