use postage_core::processor;

struct Counter;

#[processor]
impl Counter {
    #[message_handler("command", "increment")]
    async fn increment(&mut self, by: u32) {
        let _ = by;
    }
}

fn main() {}
