"""Postage's RPC echo sender, on the original library.

Run with: python rpc_echo_send.py [--quit] [--exchange E --key K --calls N --text T]
                                   [--command C]

With no option it is Postage's demo: calls `echo` with "RPC test message" on echo-exchange
with key echo-rk and prints the answer's value, or "RPC failed" (exit 1). --quit sends a
`quit` command instead. --command C calls C instead of `echo`; a failed call prints its
result's content as JSON after "RPC failed: ". --calls N makes N calls in a row with the
parameters "T i" (i = 0..N-1) and prints "i: value" for each answer (exit 1 if any
failed).
"""
import argparse
import json
import sys

import postage_env  # noqa: F401 (before any connection)
from postage_env import say

from postage import messaging

import echo_shared

parser = argparse.ArgumentParser()
parser.add_argument('--quit', action='store_true')
parser.add_argument('--exchange', default=echo_shared.EchoExchange.name)
parser.add_argument('--key', default=echo_shared.ECHO_KEY)
parser.add_argument('--calls', type=int)
parser.add_argument('--text', default='RPC test message')
parser.add_argument('--command', default='echo')
args = parser.parse_args()


class EchoProducer(messaging.GenericProducer):
    eks = [(echo_shared.exchange_named(args.exchange), args.key)]


fingerprint = messaging.Fingerprint('echo_send', 'application').as_dict()
producer = EchoProducer(fingerprint)

if args.quit:
    producer.message_quit()
    sys.exit(0)

if args.calls is None:
    reply = getattr(producer, 'rpc_' + args.command)(args.text)
    if reply:
        say(reply.body['content']['value'])
        sys.exit(0)
    say("RPC failed: {0}".format(json.dumps(reply.body['content'])))
    sys.exit(1)

failed = 0
for i in range(args.calls):
    reply = producer.rpc_echo("{0} {1}".format(args.text, i))
    if reply:
        say("{0}: {1}".format(i, reply.body['content']['value']))
    else:
        failed += 1
        say("{0}: RPC failed: {1}".format(i, json.dumps(reply.body['content'])))
sys.exit(1 if failed else 0)
