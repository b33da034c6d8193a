"""Whether the broker takes the queues Python Postage declares: a GenericConsumer binds a
queue the way Postage's receivers do (queue_declare with no flags: neither durable nor
exclusive, a 'transient non-exclusive' queue to RabbitMQ).

Run with: python declare_probe.py QUEUE

Prints "declared" (exit 0) and deletes the queue again, or "refused: <what the broker
said>" (exit 4).
"""
import sys

import postage_env  # noqa: F401 (before any connection)
from postage_env import say

from postage import messaging

import echo_shared

queue = sys.argv[1]
try:
    consumer = messaging.GenericConsumer(
        [(echo_shared.exchange_named(queue + '-exchange'), [(queue, queue)])])
except Exception as exc:  # pika's ChannelClosed / ConnectionClosed carry the reason
    say("refused: {0}: {1}".format(exc.__class__.__name__, exc))
    sys.exit(4)
consumer.channel.queue_delete(queue=queue)
consumer.channel.exchange_delete(exchange=queue + '-exchange')
consumer.conn_broker.close()
say("declared")
