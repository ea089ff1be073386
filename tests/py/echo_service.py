#!/usr/bin/python3
"""Echo service for sluicebus integration tests (python3-dbus + GLib main loop).

Usage: echo_service.py ADDRESS NAME
Connects to ADDRESS, owns NAME, exports /org/example/Echo with interface
org.example.Echo and prints "READY <unique-name>" once the name is owned.
Exits when stdin reaches EOF (so the test harness controls its lifetime).
"""
import os
import sys

import dbus
import dbus.bus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

IFACE = "org.example.Echo"


class Echo(dbus.service.Object):
    @dbus.service.method(IFACE, in_signature="s", out_signature="s")
    def Echo(self, text):
        return text

    @dbus.service.method(IFACE, in_signature="ii", out_signature="i")
    def Add(self, a, b):
        return a + b

    @dbus.service.method(IFACE, in_signature="h", out_signature="s")
    def ReadFd(self, fd):
        # take() hands us ownership of the received descriptor.
        raw = fd.take()
        with os.fdopen(raw, "rb") as f:
            f.seek(0)
            return f.read().decode()

    @dbus.service.method(IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def Fail(self, sender=None):
        raise dbus.exceptions.DBusException("deliberate failure", name="org.example.Echo.Error.Deliberate")

    @dbus.service.method(IFACE, in_signature="s", out_signature="")
    def EmitPing(self, text):
        self.Ping(text)

    @dbus.service.signal(IFACE, signature="s")
    def Ping(self, text):
        pass


def main():
    address, name = sys.argv[1], sys.argv[2]
    DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(address)
    obj = Echo(bus, "/org/example/Echo")
    bus_name = dbus.service.BusName(name, bus, do_not_queue=True)
    loop = GLib.MainLoop()

    def on_stdin(_src, _cond):
        loop.quit()
        return False

    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, on_stdin)
    print("READY", bus.get_unique_name(), flush=True)
    loop.run()
    del obj, bus_name


if __name__ == "__main__":
    main()
