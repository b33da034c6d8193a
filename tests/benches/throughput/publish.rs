//! Fire-and-forget publishing, timed to a final round trip on the publishing channel, so
//! a client that buffers is not flattered.

use postage_core::{Fingerprint, Producer};
use postage_tests::bench::Reading;

use crate::report::{Meter, rate_figure, rounds};
use crate::setup::{Bench, size_name};
use crate::{Plan, raw_amqprs, raw_lapin};

impl Bench {
    pub(crate) async fn publish(&self, plan: Plan, size: usize) {
        let key = "reading";
        let (exchange, queue) = self.topology("publish", key).await;
        let producer = Producer::builder(&self.postage_callers)
            .destination(exchange.clone(), key)
            .fingerprint(Fingerprint::new("bench", "application"))
            .build()
            .await
            .expect("a producer");
        let lapin = self
            .lapin_callers
            .create_channel()
            .await
            .expect("a channel");
        let amqprs = self.amqprs.publisher().await;
        let count = plan.count(plan.publish, size);
        let sides = ["postage", "lapin", "amqprs"];
        let runs = rounds(plan, &sides, async |side, warm_up| {
            let n = if warm_up { count / 4 } else { count }.max(1);
            let sample = match side {
                0 => {
                    let mut reading = Reading::sized(0, size);
                    let start = Meter::start();
                    for seq in 0..n {
                        reading.seq = seq as u64;
                        producer
                            .command("reading", &reading)
                            .await
                            .expect("published");
                    }
                    let channel = producer.channel().expect("a producer on a connection");
                    raw_lapin::round_trip(&channel, &exchange).await;
                    start.stop(n)
                }
                1 => raw_lapin::publish(&lapin, &exchange, key, &self.fingerprint, n, size).await,
                _ => raw_amqprs::publish(&amqprs, &exchange, key, &self.fingerprint, n, size).await,
            };
            self.purge(&queue).await;
            sample
        })
        .await;
        let name = format!("publish {}", size_name(size));
        rate_figure(plan, &name, "msg/s", &sides, &runs);
        let _ = lapin.close(200, "done".into()).await;
        let _ = amqprs.close().await;
        self.delete(&queue).await;
    }
}
