use postage_core::message_handler;

struct Echo;

impl Echo {
    #[message_handler("command", "echo")]
    async fn echo(&self, text: String) {
        let _ = text;
    }
}

fn main() {}
