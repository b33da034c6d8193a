"""Points Python Postage at the broker the tests use, without touching its files.

Python Postage 1.2.1 reads POSTAGE_VHOST, POSTAGE_USER and POSTAGE_PASSWORD itself, but
always connects to host 'localhost' (its global_hup) on pika's default port: it has no
setting for a port. Imported before any producer or consumer is made, this module

- sets pika's default port (pika.ConnectionParameters.DEFAULT_PORT, which Postage's
  ConnectionParameters(host, credentials=..., virtual_host=...) falls back to) from
  POSTAGE_PORT, as postage reads it;
- sets the host of Postage's global_hup (the dict every producer and consumer uses when
  given no hup) from POSTAGE_HOST when that is set (a single host, optionally host:port).

and gives the programs say(), which prints a line and flushes it at once.
"""
from __future__ import print_function

import os
import sys

import pika
from postage import messaging


def _configure():
    port = os.environ.get('POSTAGE_PORT')
    host = os.environ.get('POSTAGE_HOST')
    if host:
        host = host.split(',')[0].strip()
        if ':' in host:
            host, port = host.rsplit(':', 1)
        messaging.global_hup['host'] = host
    if port:
        pika.ConnectionParameters.DEFAULT_PORT = int(port)


_configure()


def say(line):
    print(line)
    sys.stdout.flush()
