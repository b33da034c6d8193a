use postage_core::processor;

struct Counter;

#[processor]
impl Counter {
    #[message_handler("command", "reset")]
    fn reset(self) {}
}

fn main() {}
