use postage_core::processor;

struct Echo;

#[processor]
impl Echo {
    #[message_handler("command", "echo", verbose)]
    async fn echo(&self, text: String) {
        let _ = text;
    }
}

fn main() {}
