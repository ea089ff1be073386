#!/usr/bin/python3
"""Answers, for each line "KIND<TAB>STRING" on stdin, "1" or "0" on stdout: whether libdbus
(the reference implementation, through its public dbus_validate_* and dbus_signature_validate*
functions) accepts STRING as KIND: sig, sig1 (one complete type), path, iface, member, error,
bus; or, for KIND msg, whether dbus_message_demarshal takes STRING (hex) as one message."""
import ctypes
import sys

lib = ctypes.CDLL("libdbus-1.so.3")


class DBusError(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("message", ctypes.c_char_p),
                ("dummy", ctypes.c_uint), ("padding", ctypes.c_void_p)]


FUNCS = {
    "sig": lib.dbus_signature_validate,
    "sig1": lib.dbus_signature_validate_single,
    "path": lib.dbus_validate_path,
    "iface": lib.dbus_validate_interface,
    "member": lib.dbus_validate_member,
    "error": lib.dbus_validate_error_name,
    "bus": lib.dbus_validate_bus_name,
}
for f in FUNCS.values():
    f.restype = ctypes.c_uint
    f.argtypes = [ctypes.c_char_p, ctypes.POINTER(DBusError)]
lib.dbus_message_demarshal.restype = ctypes.c_void_p
lib.dbus_message_demarshal.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(DBusError)]
lib.dbus_message_unref.argtypes = [ctypes.c_void_p]


def demarshal(hex_bytes, err):
    data = bytes.fromhex(hex_bytes.decode())
    msg = lib.dbus_message_demarshal(data, len(data), err)
    if msg:
        lib.dbus_message_unref(msg)
    return msg is not None


FUNCS["msg"] = demarshal
lib.dbus_error_init.argtypes = [ctypes.POINTER(DBusError)]
lib.dbus_error_free.argtypes = [ctypes.POINTER(DBusError)]

out = []
for line in sys.stdin.buffer:
    kind, _, s = line.rstrip(b"\n").partition(b"\t")
    err = DBusError()
    lib.dbus_error_init(ctypes.byref(err))
    ok = FUNCS[kind.decode()](s, ctypes.byref(err))
    lib.dbus_error_free(ctypes.byref(err))
    out.append("1" if ok else "0")
sys.stdout.write("\n".join(out) + "\n")
