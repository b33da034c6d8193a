"""A Python Postage GenericApplication, on the original library, as a Postage program
would run one: answers `ping` (built in) and an `echo` call of its own.

Run with: python generic_app.py NAME

Prints "queues N N@H P@H" (its system-wide, host-wide and unique queues), then "waiting
for messages", then "echo <parameters>" for each echo call, and "quit" when stopped.

Postage 1.2.1's GenericApplication.__init__ calls
super(GenericApplicationConsumerMicroThread, self), a name the module never defines, so the
class cannot be instantiated as shipped (NameError). Without touching the library's
files, the missing name is given the class itself, which is what the call means.
"""
import sys

import postage_env  # noqa: F401 (before any connection)
from postage_env import say

from postage import generic_application, messaging, microthreads

if not hasattr(generic_application, 'GenericApplicationConsumerMicroThread'):
    generic_application.GenericApplicationConsumerMicroThread = \
        generic_application.GenericApplication


class EchoApplication(generic_application.GenericApplication):
    @messaging.RpcHandler('command', 'echo')
    def msg_echo(self, content, reply_func):
        say("echo {0}".format(content['parameters']))
        reply_func(messaging.MessageResult(content['parameters']))


name = sys.argv[1]
fingerprint = messaging.Fingerprint(name, 'application').as_dict()
application = EchoApplication(fingerprint, None)
say("queues {0} {1} {2}".format(application.sid['name'], application.hid['name'],
                                application.uid['name']))

scheduler = microthreads.MicroScheduler()
scheduler.add_microthread(application)
say("waiting for messages")
for i in scheduler.main():
    pass
say("quit")
