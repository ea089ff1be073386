#!/usr/bin/python3
"""The client of tests/proxy_differential.rs: one fixed list of operations, run against a
filtered address (xdg-dbus-proxy's socket or a Containers1 instance made with Allow).

Usage:
  differential_client.py client ADDRESS BUS_ADDRESS
      Runs every operation on ADDRESS and prints one line per operation,
      "<operation>\t<outcome>": the value ("x", "3", "true", ":1.7", "[self]"),
      "error:<D-Bus error name>", or "received" / "absent" (a signal or a call to the
      client; an absence is checked with a round-trip sentinel, never a wait). BUS_ADDRESS
      is the real bus, unfiltered: a host connection there makes the services emit
      signals, connections there own names, and the caller helper (below) connects there.
  differential_client.py caller BUS_ADDRESS CLIENT_UNIQUE
      The helper that calls the client first: connects to BUS_ADDRESS, prints its unique
      name, waits for a line on stdin, calls CLIENT_UNIQUE's Poke() then GiveFd() (whose
      reply carries an fd), prints each outcome, and answers calls to /org/example/Caller
      until stdin reaches end of file.

The service names and what the options of the Rust test grant them:
  org.example.Talk       --talk          org.example.Seen      --see
  org.example.Calls      --call=...=org.example.Echo.Echo@/org/example/*
  org.example.Tree.Leaf  --talk=org.example.Tree.*
  org.example.Bcast      --broadcast=...=org.example.Echo.Ping@/org/example/*
  org.example.Hidden     (no option)
Activatable (a .service file, Exec=/bin/false) besides those: org.example.Sleeper (no
option) and org.example.Tree.Sprout (--talk=org.example.Tree.*), owned by nobody.
Names the client or the host connection own during the run: org.example.Mine and
org.example.App.* (--own), org.example.Late (--see), org.example.LateHidden (no option),
org.example.Sticky (--talk).
"""
import os
import subprocess
import sys
import tempfile

import dbus
import dbus.bus
import dbus.lowlevel
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

DBUS = 'org.freedesktop.DBus'
DBUS_PATH = '/org/freedesktop/DBus'
ECHO = 'org.example.Echo'
ECHO_PATH = '/org/example/Echo'
TIMEOUT = 10


def fmt(v):
    if isinstance(v, dbus.Boolean):
        return 'true' if v else 'false'
    if isinstance(v, (list, tuple)):
        return '[' + ','.join(fmt(x) for x in v) + ']'
    if isinstance(v, int):
        return str(int(v))
    return str(v)


def call(conn, dest, path, iface, member, sig='', args=(), no_auto_start=False):
    """Call and wait for the reply, running the main loop meanwhile (so signals and calls
    that arrive before the reply are dispatched first, in order). Returns the outcome."""
    m = dbus.lowlevel.MethodCallMessage(dest, path, iface, member)
    if sig:
        m.append(*args, signature=sig)
    if no_auto_start:
        m.set_auto_start(False)
    got = []
    loop = GLib.MainLoop()

    def done(reply):
        got.append(reply)
        loop.quit()

    conn.send_message_with_reply(m, done, TIMEOUT, require_main_loop=True)
    if not got:
        loop.run()
    r = got[0]
    if isinstance(r, dbus.lowlevel.ErrorMessage):
        return 'error:' + r.get_error_name()
    vals = r.get_args_list()
    if not vals:
        return 'ok'
    return fmt(vals[0]) if len(vals) == 1 else fmt(vals)


def drv(conn, member, sig='', args=()):
    return call(conn, DBUS, DBUS_PATH, DBUS, member, sig, args)


def sync(conn):
    """Round-trip sentinel: whatever the bus sent this connection before the reply to
    GetId has been dispatched when this returns."""
    r = drv(conn, 'GetId')
    assert not r.startswith('error:'), r


class Poked(dbus.service.Object):
    """The client's object: records who called which method, then runs `notify`."""
    def __init__(self, conn, path, log):
        dbus.service.Object.__init__(self, conn, path)
        self.log = log
        self.notify = None

    def called(self, member, sender):
        self.log.append(('call', member, str(sender)))
        if self.notify:
            self.notify()

    @dbus.service.method('org.example.Client', in_signature='', out_signature='s',
                         sender_keyword='sender')
    def Poke(self, sender=None):
        self.called('Poke', sender)
        return 'poked'

    @dbus.service.method('org.example.Client', in_signature='', out_signature='h',
                         sender_keyword='sender')
    def GiveFd(self, sender=None):
        self.called('GiveFd', sender)
        with tempfile.TemporaryFile() as f:
            f.write(b'an fd from the client')
            f.flush()
            return dbus.types.UnixFd(f.fileno())


class HostEcho(dbus.service.Object):
    @dbus.service.method(ECHO, in_signature='s', out_signature='s')
    def Echo(self, text):
        return text


def client(addr, bus_addr):
    DBusGMainLoop(set_as_default=True)
    c = dbus.bus.BusConnection(addr)
    host = dbus.bus.BusConnection(bus_addr)
    me = c.get_unique_name()
    events = []

    def record(_conn, msg):
        if isinstance(msg, dbus.lowlevel.SignalMessage):
            args = msg.get_args_list()
            events.append(('signal', msg.get_member()) + tuple(str(a) for a in args))
        return dbus.lowlevel.HANDLER_RESULT_NOT_YET_HANDLED

    c.add_message_filter(record)
    poked = Poked(c, '/org/example/Client', events)
    _host_obj = HostEcho(host, '/org/example/Host')

    def out(op, outcome):
        print(op + '\t' + outcome, flush=True)

    def owner(name):
        # The unfiltered view, for calls by unique name.
        return str(host.get_name_owner(name))

    def signal_seen(member, *args):
        return any(e[:2 + len(args)] == ('signal', member) + args for e in events)

    # --- what the client may see -------------------------------------------------------
    listed = drv(c, 'ListNames')
    for n in ['org.freedesktop.DBus', 'org.example.Talk', 'org.example.Seen',
              'org.example.Hidden', 'org.example.Calls', 'org.example.Tree.Leaf',
              'org.example.Bcast']:
        names = listed.strip('[]').split(',')
        out('ListNames lists ' + n, 'listed' if n in names else 'absent')
    activatable = drv(c, 'ListActivatableNames').strip('[]').split(',')
    for n in ['org.example.Talk', 'org.example.Seen', 'org.example.Calls', 'org.example.Bcast',
              'org.example.Hidden', 'org.example.Sleeper', 'org.example.Tree.Sprout']:
        out('ListActivatableNames lists ' + n, 'listed' if n in activatable else 'absent')
    for n in ['org.example.Talk', 'org.example.Seen', 'org.example.Hidden',
              'org.example.Calls', 'org.example.Bcast', 'org.example.Missing']:
        out('NameHasOwner ' + n, drv(c, 'NameHasOwner', 's', [n]))
    for n in ['org.example.Talk', 'org.example.Seen', 'org.example.Hidden']:
        out('GetNameOwner ' + n, drv(c, 'GetNameOwner', 's', [n]))
    for n in ['org.example.Seen', 'org.example.Hidden', 'org.example.Missing']:
        out('GetConnectionUnixUser ' + n, drv(c, 'GetConnectionUnixUser', 's', [n]))

    # --- calls -----------------------------------------------------------------------------
    def echo(dest, path=ECHO_PATH, member='Echo'):
        if member == 'Add':
            return call(c, dest, path, ECHO, 'Add', 'ii', [1, 2])
        return call(c, dest, path, ECHO, member, 's', ['x'])

    out('call Talk.Echo', echo('org.example.Talk'))
    out('call Talk.Add', echo('org.example.Talk', member='Add'))
    out("call Talk's owner by unique name", echo(owner('org.example.Talk')))
    out('call Seen.Echo', echo('org.example.Seen'))
    out('call Calls.Echo (the --call rule)', echo('org.example.Calls'))
    out('call Calls.Add (other method)', echo('org.example.Calls', member='Add'))
    out('call Calls.Echo at /other (other path)', echo('org.example.Calls', path='/other'))
    out("call Calls's owner by unique name, Add", echo(owner('org.example.Calls'), member='Add'))
    out('call Tree.Leaf.Echo (--talk=Tree.*)', echo('org.example.Tree.Leaf'))
    out('call Bcast.Echo (--broadcast only)', echo('org.example.Bcast'))
    out('call Hidden.Echo', echo('org.example.Hidden'))
    out("call Hidden's owner by unique name", echo(owner('org.example.Hidden')))
    out('call Missing.Echo (nobody owns it)', echo('org.example.Missing'))
    out('call a unique name nobody has', echo(':1.9999'))
    out('call Sleeper.Echo (activatable, no option)', echo('org.example.Sleeper'))
    out('call Hidden.Echo with NO_AUTO_START',
        call(c, 'org.example.Hidden', ECHO_PATH, ECHO, 'Echo', 's', ['x'], no_auto_start=True))
    out('call Calls Echo without an interface',
        call(c, 'org.example.Calls', ECHO_PATH, None, 'Echo', 's', ['x']))
    out('call Talk Echo without an interface',
        call(c, 'org.example.Talk', ECHO_PATH, None, 'Echo', 's', ['x']))
    out('call itself by unique name', call(c, me, '/org/example/Client', 'org.example.Client',
                                           'Poke'))
    # A second connection to the same address: the same sandbox?
    sibling = dbus.bus.BusConnection(addr)
    _sibling_obj = HostEcho(sibling, '/org/example/Sibling')
    out('NameHasOwner a second connection to the same address',
        drv(c, 'NameHasOwner', 's', [sibling.get_unique_name()]))
    out('call a second connection to the same address',
        call(c, sibling.get_unique_name(), '/org/example/Sibling', ECHO, 'Echo', 's', ['x']))
    with tempfile.TemporaryFile() as f:
        f.write(b'through an fd')
        f.flush()
        for n in ['org.example.Talk', 'org.example.Calls']:
            out('call %s.ReadFd with an fd' % n.split('.', 2)[2],
                call(c, n, ECHO_PATH, ECHO, 'ReadFd', 'h', [dbus.types.UnixFd(f.fileno())]))

    # --- owning names ----------------------------------------------------------------------
    out('RequestName Mine (--own)', drv(c, 'RequestName', 'su', ['org.example.Mine', 0]))
    out('RequestName App.Player (--own=App.*)',
        drv(c, 'RequestName', 'su', ['org.example.App.Player', 0]))
    out('RequestName App (--own=App.*)', drv(c, 'RequestName', 'su', ['org.example.App', 0]))
    q = drv(c, 'ListQueuedOwners', 's', ['org.example.App.Player'])
    out('ListQueuedOwners App.Player', q.replace(me, 'self'))
    out('RequestName Talk (--talk)', drv(c, 'RequestName', 'su', ['org.example.Talk', 0]))
    out('RequestName NotMine (no option)', drv(c, 'RequestName', 'su', ['org.example.NotMine', 0]))
    out('ReleaseName NotMine (no option)', drv(c, 'ReleaseName', 's', ['org.example.NotMine']))
    out('ReleaseName Mine (--own)', drv(c, 'ReleaseName', 's', ['org.example.Mine']))

    # --- starting services, the bus's own restrictions ---------------------------------------
    for n in ['org.example.Talk', 'org.example.Seen', 'org.example.Bcast', 'org.example.Hidden',
              'org.example.Sleeper', 'org.example.Tree.Sprout']:
        out('StartServiceByName ' + n, drv(c, 'StartServiceByName', 'su', [n, 0]))
    out('AddMatch eavesdrop=true',
        drv(c, 'AddMatch', 's', ["type='method_call',eavesdrop=true"]))
    out('BecomeMonitor', call(c, DBUS, DBUS_PATH, 'org.freedesktop.DBus.Monitoring',
                              'BecomeMonitor', 'asu', [dbus.Array([], signature='s'), 0]))
    # The driver's other interfaces and the credentials of a name ('ok': a reply, whatever
    # its value).
    def ok(r):
        return r if r.startswith('error:') else 'ok'

    out('Peer.Ping the bus', ok(call(c, DBUS, DBUS_PATH, 'org.freedesktop.DBus.Peer', 'Ping')))
    out('Introspect the bus',
        ok(call(c, DBUS, DBUS_PATH, 'org.freedesktop.DBus.Introspectable', 'Introspect')))
    out('Properties.Get the bus Features',
        ok(call(c, DBUS, DBUS_PATH, 'org.freedesktop.DBus.Properties', 'Get', 'ss',
                [DBUS, 'Features'])))
    for n in ['org.example.Seen', 'org.example.Hidden']:
        out('GetConnectionCredentials ' + n, ok(drv(c, 'GetConnectionCredentials', 's', [n])))
    out('Containers1.GetConnectionInstance of itself',
        ok(call(c, DBUS, DBUS_PATH, 'org.freedesktop.DBus.Containers1', 'GetConnectionInstance',
                's', [me])))

    # --- broadcasts: the host makes each service emit Ping(tag), then a sentinel ---------------
    out('AddMatch Ping',
        drv(c, 'AddMatch', 's', ["type='signal',interface='%s',member='Ping'" % ECHO]))
    for n in ['org.example.Talk', 'org.example.Seen', 'org.example.Calls', 'org.example.Bcast',
              'org.example.Hidden']:
        tag = 'ping-from-' + n
        r = call(host, n, ECHO_PATH, ECHO, 'EmitPing', 's', [tag])
        assert r == 'ok', (n, r)
        sync(c)
        out('broadcast Ping from ' + n, 'received' if signal_seen('Ping', tag) else 'absent')

    # --- NameOwnerChanged for names that appear later ------------------------------------------
    out('AddMatch NameOwnerChanged',
        drv(c, 'AddMatch', 's', ["type='signal',sender='%s',member='NameOwnerChanged'" % DBUS]))
    late = {}
    for n in ['org.example.Late', 'org.example.LateHidden']:
        # One connection per name: each owner owns nothing else.
        late[n] = dbus.bus.BusConnection(bus_addr)
        assert drv(late[n], 'RequestName', 'su', [n, 0]) == '1'
    sync(c)
    for n in ['org.example.Late', 'org.example.LateHidden']:
        out('NameOwnerChanged for ' + n + ' (appears later)',
            'received' if signal_seen('NameOwnerChanged', n) else 'absent')
    # Then each owner leaves; the host hearing the unique name's NameOwnerChanged is the
    # sentinel for the bus having sent the client everything about that departure.
    for n, conn in late.items():
        unique = conn.get_unique_name()
        loop = GLib.MainLoop()
        heard = []

        def gone(*args):
            heard.append(args)
            loop.quit()

        match = host.add_signal_receiver(gone, 'NameOwnerChanged', DBUS, DBUS, DBUS_PATH,
                                         arg0=unique)
        sync(host)
        conn.close()
        if not heard:
            loop.run()
        match.remove()
        sync(c)
        out('NameOwnerChanged for %s when its owner leaves' % n,
            'received' if signal_seen('NameOwnerChanged', n, unique, '') else 'absent')
        out("NameOwnerChanged for %s's owner's unique name when it leaves" % n,
            'received' if signal_seen('NameOwnerChanged', unique, unique, '') else 'absent')

    # --- a unique name's rights after it released the name that gave them -------------------
    sticky = dbus.bus.BusConnection(bus_addr)
    _sticky_obj = HostEcho(sticky, '/org/example/Host')
    sticky_unique = sticky.get_unique_name()
    assert drv(sticky, 'RequestName', 'su', ['org.example.Sticky', 0]) == '1'
    sync(c)  # the filter has seen the new owner
    out('call the owner of Sticky (--talk) by unique name',
        call(c, sticky_unique, '/org/example/Host', ECHO, 'Echo', 's', ['x']))
    assert drv(sticky, 'ReleaseName', 's', ['org.example.Sticky']) == '1'
    sync(c)
    out('call it again after it released Sticky',
        call(c, sticky_unique, '/org/example/Host', ECHO, 'Echo', 's', ['x']))

    # --- a peer that called the client first ---------------------------------------------------
    helper = subprocess.Popen([sys.executable, os.path.abspath(__file__), 'caller', bus_addr, me],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    caller = helper.stdout.readline().strip()
    assert caller.startswith(':'), caller
    out('NameHasOwner caller, before it calls', drv(c, 'NameHasOwner', 's', [caller]))
    helper.stdin.write('go\n')
    helper.stdin.flush()
    # It calls Poke, then GiveFd (whose reply carries an fd): wait for both.
    wanted = [('call', 'Poke', caller), ('call', 'GiveFd', caller)]
    if not all(w in events for w in wanted):
        loop = GLib.MainLoop()
        fired = []

        def check():
            if all(w in events for w in wanted):
                loop.quit()

        def give_up():
            fired.append(True)
            loop.quit()
            return False

        poked.notify = check
        source = GLib.timeout_add_seconds(TIMEOUT, give_up)
        loop.run()
        if not fired:
            GLib.source_remove(source)
        poked.notify = None
    out('the caller reaches the client', 'received' if wanted[0] in events else 'absent')
    out('NameHasOwner caller, after it called', drv(c, 'NameHasOwner', 's', [caller]))
    out('GetConnectionUnixUser caller, after it called',
        drv(c, 'GetConnectionUnixUser', 's', [caller]))
    out('call the caller back', call(c, caller, '/org/example/Caller', ECHO, 'Echo', 's', ['x']))
    sync(c)  # the bus has routed the client's replies
    helper.stdin.close()
    out("the caller's Poke returns", helper.stdout.readline().strip())
    out("the caller's GiveFd returns (the reply carries an fd)", helper.stdout.readline().strip())
    helper.wait(TIMEOUT)

    # --- signals between the client and an outside peer -----------------------------------------
    host_events = []

    def host_record(_conn, msg):
        if isinstance(msg, dbus.lowlevel.SignalMessage):
            args = tuple(str(a) for a in msg.get_args_list())
            host_events.append(('signal', msg.get_member()) + args)
        return dbus.lowlevel.HANDLER_RESULT_NOT_YET_HANDLED

    host.add_message_filter(host_record)
    assert drv(host, 'AddMatch', 's', ["type='signal',interface='org.example.Out'"]) == 'ok'
    sig = dbus.lowlevel.SignalMessage('/org/example/Client', 'org.example.Out', 'Shout')
    sig.append('from-the-client', signature='s')
    c.send_message(sig)
    sync(c)  # the bus has handled the signal
    sync(host)
    out("the client's broadcast reaches an outside subscriber",
        'received' if ('signal', 'Shout', 'from-the-client') in host_events else 'absent')
    sig = dbus.lowlevel.SignalMessage('/org/example/Host', 'org.example.In', 'Whisper')
    sig.set_destination(me)
    sig.append('to-the-client', signature='s')
    host.send_message(sig)
    sync(host)  # the bus has handled the signal
    sync(c)
    out('a unicast signal from an outside peer to the client',
        'received' if signal_seen('Whisper', 'to-the-client') else 'absent')


def caller(bus_addr, client_unique):
    DBusGMainLoop(set_as_default=True)
    conn = dbus.bus.BusConnection(bus_addr)
    _obj = HostEcho(conn, '/org/example/Caller')
    print(conn.get_unique_name(), flush=True)
    sys.stdin.readline()
    print(call(conn, client_unique, '/org/example/Client', 'org.example.Client', 'Poke'),
          flush=True)
    m = dbus.lowlevel.MethodCallMessage(client_unique, '/org/example/Client',
                                        'org.example.Client', 'GiveFd')
    loop = GLib.MainLoop()
    got = []

    def done(reply):
        got.append(reply)
        loop.quit()

    conn.send_message_with_reply(m, done, TIMEOUT, require_main_loop=True)
    loop.run()
    r = got[0]
    if isinstance(r, dbus.lowlevel.ErrorMessage):
        print('error:' + r.get_error_name(), flush=True)
    else:
        with os.fdopen(r.get_args_list()[0].take(), 'rb') as f:
            f.seek(0)
            print(f.read().decode(), flush=True)
    loop = GLib.MainLoop()

    def eof(_src, _cond):
        loop.quit()
        return False

    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, eof)
    loop.run()


if __name__ == '__main__':
    if sys.argv[1] == 'client':
        client(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == 'caller':
        caller(sys.argv[2], sys.argv[3])
    else:
        sys.exit('unknown mode ' + sys.argv[1])
