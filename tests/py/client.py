#!/usr/bin/python3
"""One-shot python3-dbus client for sluicebus integration tests.

Usage:
  client.py ADDRESS echo NAME TEXT        -> prints the echoed text
  client.py ADDRESS add NAME A B          -> prints A+B
  client.py ADDRESS fd NAME TEXT          -> passes a file holding TEXT as a unix fd, prints the reply
                                          (or ERROR <name>)
  client.py ADDRESS fail NAME             -> prints the D-Bus error name
  client.py ADDRESS unique                -> prints own unique name
"""
import os
import sys
import tempfile

import dbus
import dbus.bus

IFACE = "org.example.Echo"
PATH = "/org/example/Echo"


def main():
    address, cmd = sys.argv[1], sys.argv[2]
    bus = dbus.bus.BusConnection(address)
    if cmd == "unique":
        print(bus.get_unique_name())
        return
    proxy = bus.get_object(sys.argv[3], PATH, introspect=False)
    iface = dbus.Interface(proxy, IFACE)
    if cmd == "echo":
        print(iface.Echo(sys.argv[4], timeout=10))
    elif cmd == "add":
        print(int(iface.Add(int(sys.argv[4]), int(sys.argv[5]), timeout=10)))
    elif cmd == "fd":
        with tempfile.TemporaryFile() as f:
            f.write(sys.argv[4].encode())
            f.flush()
            try:
                print(iface.ReadFd(dbus.types.UnixFd(f.fileno()), timeout=10))
            except dbus.exceptions.DBusException as e:
                print("ERROR", e.get_dbus_name())
    elif cmd == "fail":
        try:
            iface.Fail(timeout=10)
            print("no error")
        except dbus.exceptions.DBusException as e:
            print(e.get_dbus_name())
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
