use postage_core::processor;

struct Clock;

#[processor]
impl Clock {
    #[timer(every = "soon")]
    fn tick(&self, n: u8) {
        let _ = n;
    }
}

#[postage_core::timer(every = "1s")]
fn outside() {}

fn main() {}
