"""Postage's RPC echo receiver, on the original library: answers `echo` calls.

Run with: python rpc_echo_receive.py (PYTHONPATH from scripts/python-postage.sh)

Prints, like demos/src/bin/rpc_echo_receive.rs: "waiting for messages", then for each
call its parameters, "replied" once it answered "RPC message received", and "quit" when a
`quit` command stopped it.
"""
import postage_env  # noqa: F401 (before any connection)
from postage_env import say

from postage import messaging, microthreads

import echo_shared


class EchoReceiveProcessor(messaging.MessageProcessor):
    def __init__(self, fingerprint):
        eqk = [
            (echo_shared.EchoExchange, [
                (echo_shared.ECHO_QUEUE, echo_shared.ECHO_KEY),
            ]),
        ]
        super(EchoReceiveProcessor, self).__init__(fingerprint, eqk, None, None)

    @messaging.RpcHandler('command', 'echo')
    def msg_echo(self, content, reply_func):
        say(content['parameters'])
        reply_func(messaging.MessageResult("RPC message received"))
        say("replied")


fingerprint = messaging.Fingerprint('echo_receive', 'controller').as_dict()

scheduler = microthreads.MicroScheduler()
scheduler.add_microthread(EchoReceiveProcessor(fingerprint))
say("waiting for messages")
for i in scheduler.main():
    pass
say("quit")
