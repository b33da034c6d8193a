use postage_core::{Message, processor};

struct Calculator;

#[processor]
impl Calculator {
    #[rpc_handler("command", "inspect", full_body)]
    async fn inspect(&self, message: Message) -> String {
        message.name
    }
}

fn main() {}
