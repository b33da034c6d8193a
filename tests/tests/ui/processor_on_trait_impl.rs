use std::fmt;

use postage_core::processor;

struct Echo;

#[processor]
impl fmt::Display for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("echo")
    }
}

fn main() {}
