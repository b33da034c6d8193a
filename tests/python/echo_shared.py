"""What the echo programs share, as echo_shared.py in Postage's demos, with the names of
demos/src/lib.rs (echo-exchange, echo-queue, echo-rk), so either side talks to the other.
"""
from postage import messaging


class EchoExchange(messaging.Exchange):
    name = "echo-exchange"
    exchange_type = "direct"
    passive = False
    durable = True
    auto_delete = False


ECHO_QUEUE = 'echo-queue'
ECHO_KEY = 'echo-rk'


def exchange_named(name):
    """An exchange class like EchoExchange under another name."""
    return type('Exchange_' + name.replace('-', '_'), (EchoExchange,), {'name': name})
