use postage_core::processor;

struct Echo;

#[processor]
impl Echo {
    #[message_handler("command", "")]
    async fn echo(&self, text: String) {
        let _ = text;
    }
}

fn main() {}
