use postage_core::{Metadata, processor};

struct Echo;

#[processor]
impl Echo {
    #[message_handler("command", "echo")]
    async fn echo(&self, text: String, metadata: &Metadata, times: u32) {
        let _ = (text, metadata, times);
    }
}

fn main() {}
