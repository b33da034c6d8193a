use postage_core::processor;

struct Monitor;

#[processor]
impl Monitor {
    #[rpc_handler("status", "online")]
    async fn online(&self) -> bool {
        true
    }
}

fn main() {}
