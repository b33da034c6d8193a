use postage_core::processor;

struct Calculator;

#[processor]
impl Calculator {
    #[rpc_handler("command", "sum")]
    async fn sum(&self, numbers: Vec<i64>) {
        let _ = numbers;
    }
}

fn main() {}
