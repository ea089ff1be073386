//! org.freedesktop.DBus.Containers1 end to end: each test runs one python3 scenario (dbus-python
//! for calls with `a{sv}`, plus a tiny raw client for signals and header field 10) against a
//! private bus. Cases follow dbus's test/containers.c and the edge cases of the spec brief.

mod common;

use common::{
    py_dir, run_with_timeout, running_as_root, skip, CmdOutput, TempDir, TestBus, PYTHON,
};
use std::process::Command;
use std::time::Duration;

/// Policy extras: let other uids connect (attacker checks), as multi-user.conf.
const MULTI_USER: &str = r#"<policy context="default"><allow user="*"/></policy>"#;

fn bus_with(extra: &str) -> TestBus {
    TestBus::for_containers(extra)
}

/// Run python `body` after the helpers of tests/py/containers_prelude.py, with the bus
/// address as argv[1].
fn run_python(bus: &TestBus, body: &str, timeout: Duration) -> CmdOutput {
    let script = format!("from containers_prelude import *\n{body}");
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c")
        .arg(&script)
        .arg(&bus.address)
        .env("PYTHONPATH", py_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_with_timeout(cmd, timeout)
}

#[track_caller]
fn scenario(bus: &TestBus, body: &str) {
    let out = run_python(
        bus,
        &format!("{body}\nprint('PASS')\n"),
        Duration::from_secs(60),
    );
    assert!(
        out.stdout.trim_end().ends_with("PASS"),
        "scenario failed:\nstdout:\n{}\nstderr:\n{}\ndaemon:\n{}",
        out.stdout,
        out.stderr,
        bus.stderr()
    );
}

#[test]
fn supported_arguments_interfaces_and_introspection() {
    let bus = bus_with("");
    scenario(
        &bus,
        r#"
b = conn()
props = drv(b).GetAll(C1, dbus_interface='org.freedesktop.DBus.Properties')
assert list(props.keys()) == ['SupportedArguments'], props
assert sorted(props['SupportedArguments']) == ['Allow', 'Socket', 'StopOnDisconnect', 'StopOnNotify'], props
assert props['SupportedArguments'].signature == 's'
ifaces = drv(b).Get(DBUS, 'Interfaces', dbus_interface='org.freedesktop.DBus.Properties')
assert C1 in ifaces, ifaces
xml = drv(b).Introspect(dbus_interface='org.freedesktop.DBus.Introspectable')
assert '<interface name="org.freedesktop.DBus.Containers1">' in xml
assert '<signal name="InstanceRemoved"><arg type="o" name="path"/>' in xml
assert err(lambda: drv(b).Set(C1, 'SupportedArguments', dbus.Array([], signature='s', variant_level=1), dbus_interface='org.freedesktop.DBus.Properties')) == E + 'PropertyReadOnly'
assert err(lambda: drv(b).Get(C1, 'Nope', dbus_interface='org.freedesktop.DBus.Properties')) == E + 'UnknownProperty'
# Only at the canonical path; unknown members; wrong signatures.
other = b.get_object(DBUS, '/', introspect=False)
assert err(lambda: other.GetInstanceInfo(dbus.ObjectPath('/'), dbus_interface=C1)) == E + 'UnknownInterface'
assert err(lambda: drv(b).NoSuchMethod(dbus_interface=C1)) == E + 'UnknownMethod'
assert err(lambda: drv(b).GetInstanceInfo(dbus.String('nope'), dbus_interface=C1)) == E + 'InvalidArgs'
assert err(lambda: drv(b).AddServer('a.b', 'x', sv(), dbus_interface=C1)) == E + 'InvalidArgs'
"#,
    );
}

#[test]
fn basic_contained_connection() {
    let bus = bus_with("");
    scenario(
        &bus,
        r#"
mgr = conn()
path, sock, addr = add_server(mgr)
obs = Raw()
obs.call('AddMatch', "interface='com.example.Shouting'")
cc = conn(addr)
u = cc.get_unique_name()
assert drv(cc).GetNameOwner(DBUS, dbus_interface=DBUS) == DBUS
# Contained and host peers reach each other.
h = Raw()
cc.send_message(dbus.lowlevel.MethodCallMessage(h.unique, '/', 'com.example.Peer', 'Knock'))
cc.flush()
h.wait(lambda m: m['member'] == 'Knock')
# Without RequestHeader: no field 10.
signal(cc, 'FromContained'); signal(mgr, 'FromHost')
m = obs.wait(lambda m: m['member'] == 'FromContained'); assert 10 not in m['fields'], m
m = obs.wait(lambda m: m['member'] == 'FromHost'); assert 10 not in m['fields'], m
assert obs.call('RequestHeader', iface=C1)['type'] == 2
signal(cc, 'FromContained'); signal(mgr, 'FromHost')
m = obs.wait(lambda m: m['member'] == 'FromContained'); assert m['fields'][10] == path, m
m = obs.wait(lambda m: m['member'] == 'FromHost'); assert m['fields'][10] == '/', m
assert err(lambda: drv(cc).UpdateActivationEnvironment(dbus.Dictionary({}, signature='ss'), dbus_interface=DBUS)) == E + 'AccessDenied'
r = drv(mgr).GetConnectionInstance(u, dbus_interface=C1)
assert r[0] == path and r[1]['UnixUserID'] == os.getuid() and r[2] == 'com.example.NotFlatpak' and r[3] == 'sample-app' and len(r[4]) == 0, r
assert C1 + '.Instance' not in r[1], r
i = info(mgr, path)
assert tuple(i) == tuple(r[1:]), (i, r)
"#,
    );
}

#[test]
fn request_header_method_calls_and_bus_messages() {
    let bus = bus_with("");
    scenario(
        &bus,
        r#"
mgr = conn()
path, sock, addr = add_server(mgr)
svc = Raw()
m = svc.call('RequestHeader', iface=C1)
assert m['type'] == 2 and 10 not in m['fields'], m
# Replies from the bus now carry '/'.
m = svc.call('GetId'); assert m['fields'].get(10) == '/', m
# A contained caller cannot forge field 10; an uncontained one neither.
cr = Raw(addr)
cr.send(1, '/x', 'com.example.Svc', 'Hi', svc.unique, field10='/org/freedesktop/DBus/Containers1/c999')
m = svc.wait(lambda m: m['member'] == 'Hi'); assert m['fields'][10] == path, m
h = Raw()
h.send(1, '/x', 'com.example.Svc', 'Hi2', svc.unique, field10=path)
m = svc.wait(lambda m: m['member'] == 'Hi2'); assert m['fields'][10] == '/', m
# A receiver that never asked sees neither forged nor real values.
h.send(1, '/x', 'com.example.Svc', 'Hi3', h.unique, field10=path)
m = h.wait(lambda m: m['member'] == 'Hi3'); assert 10 not in m['fields'], m
"#,
    );
}

#[test]
fn escape_attempts_are_denied() {
    let bus = bus_with("");
    scenario(
        &bus,
        r#"
mgr = conn()
path, sock, addr = add_server(mgr)
cc = conn(addr)
d = drv(cc)
assert err(lambda: d.AddServer('a.b', 'x', sv(), sv(), dbus_interface=C1)) == E + 'AccessDenied'
assert err(lambda: d.AddServer('a.b', 'x', 'y', sv(), sv(), dbus_interface=C1)) == E + 'AccessDenied'
# Even for its own instance, and before the signature check.
assert err(lambda: d.StopInstance(path, dbus_interface=C1)) == E + 'AccessDenied'
assert err(lambda: d.StopListening(path, dbus_interface=C1)) == E + 'AccessDenied'
assert err(lambda: d.StopListening(dbus_interface=C1)) == E + 'AccessDenied'
assert err(lambda: d.BecomeMonitor(dbus.Array([], signature='s'), dbus.UInt32(0), dbus_interface='org.freedesktop.DBus.Monitoring')) == E + 'AccessDenied'
assert err(lambda: d.AddMatch("eavesdrop=true", dbus_interface=DBUS)) == E + 'AccessDenied'
for m in ('GetStats', 'GetAllMatchRules'):
    assert err(lambda: getattr(d, m)(dbus_interface='org.freedesktop.DBus.Debug.Stats')) == E + 'AccessDenied'
assert err(lambda: d.GetConnectionStats(DBUS, dbus_interface='org.freedesktop.DBus.Debug.Stats')) == E + 'AccessDenied'
# Allowed: queries, properties, RequestHeader, ordinary matches.
d.GetInstanceInfo(path, dbus_interface=C1)
d.Get(C1, 'SupportedArguments', dbus_interface='org.freedesktop.DBus.Properties')
d.RequestHeader(dbus_interface=C1)
d.AddMatch("type='signal'", dbus_interface=DBUS)
cred = d.GetConnectionCredentials(cc.get_unique_name(), dbus_interface=DBUS)
assert cred[C1 + '.Instance'] == path, cred
# The host side is still privileged.
drv(mgr).GetStats(dbus_interface='org.freedesktop.DBus.Debug.Stats')
# After StopInstance the contained client is gone and cannot come back.
drv(mgr).StopInstance(path, dbus_interface=C1)
wait_gone(sock)
try:
    conn(addr)
    raise AssertionError('reconnected')
except dbus.exceptions.DBusException:
    pass
"#,
    );
}

#[test]
fn metadata_and_credentials() {
    let bus = bus_with("");
    scenario(
        &bus,
        r#"
mgr = conn()
md = {'Species': 'Martes martes', 'IsCrepuscular': True, 'NChildren': dbus.UInt32(2),
      'Nested': dbus.Dictionary({'x': dbus.Array([dbus.Byte(1)], signature='y', variant_level=1)}, signature='sv', variant_level=1)}
path, sock, addr = add_server(mgr, 'org.example.Springwatch', '', md)
cc = conn(addr)
cred = drv(cc).GetConnectionCredentials(cc.get_unique_name(), dbus_interface=DBUS)
assert cred[C1 + '.Instance'] == path, cred
assert isinstance(cred[C1 + '.Instance'], dbus.ObjectPath), cred
for name in (cc.get_unique_name(),):
    r = drv(mgr).GetConnectionInstance(name, dbus_interface=C1)
    assert r[0] == path and r[2] == 'org.example.Springwatch' and r[3] == '', r
    assert r[1]['UnixUserID'] == os.getuid() and r[1]['ProcessID'] == os.getpid(), r
    assert C1 + '.Instance' not in r[1]
    m = r[4]
    assert m['Species'] == 'Martes martes' and m['IsCrepuscular'] == True and m['NChildren'] == 2, m
    assert isinstance(m['NChildren'], dbus.UInt32) and isinstance(m['IsCrepuscular'], dbus.Boolean)
    assert list(m['Nested']['x']) == [1], m
# Uncontained connections and the bus have no Instance key.
for n in (mgr.get_unique_name(), DBUS):
    cred = drv(mgr).GetConnectionCredentials(n, dbus_interface=DBUS)
    assert not any(k.startswith(C1) for k in cred), cred
# A contained owner of a well-known name.
cc.request_name('com.example.Contained')
assert drv(mgr).GetConnectionInstance('com.example.Contained', dbus_interface=C1)[0] == path
w = Raw()
watch_leaving(w, cc.get_unique_name())
cc.close()
wait_left(w, cc.get_unique_name())
assert err(lambda: drv(mgr).GetConnectionInstance('com.example.Contained', dbus_interface=C1)) == E + 'NameHasNoOwner'
"#,
    );
}

#[test]
fn invalid_arguments_and_getters() {
    let bus = bus_with("");
    scenario(
        &bus,
        r#"
b = conn()
d = drv(b)
assert err(lambda: d.GetConnectionInstance(b.get_unique_name(), dbus_interface=C1)) == E + 'NotContainer'
assert err(lambda: d.GetConnectionInstance(DBUS, dbus_interface=C1)) == E + 'NotContainer'
assert err(lambda: d.GetConnectionInstance('com.example.Nope', dbus_interface=C1)) == E + 'NameHasNoOwner'
assert err(lambda: d.GetConnectionInfo(b.get_unique_name(), dbus_interface=C1)) == E + 'NotContainer'
assert err(lambda: d.GetInstanceInfo(dbus.ObjectPath('/nope'), dbus_interface=C1)) == E + 'NotContainer'
assert err(lambda: d.StopListening(dbus.ObjectPath('/nope'), dbus_interface=C1)) == E + 'NotContainer'
assert err(lambda: d.StopInstance(dbus.ObjectPath('/org/freedesktop/DBus/Containers1/c0'), dbus_interface=C1)) == E + 'NotContainer'
assert err(lambda: d.AddServer('com.example.NotFlatpak', 'x', sv(), sv({'ThisArgumentIsntImplemented': False}), dbus_interface=C1)) == E + 'InvalidArgs'
assert err(lambda: d.AddServer('com.example.NotFlatpak', 'x', sv(), sv({'StopOnDisconnect': dbus.UInt32(1)}), dbus_interface=C1)) == E + 'InvalidArgs'
assert err(lambda: d.AddServer('this is not a valid container type name', 'x', sv(), sv(), dbus_interface=C1)) == E + 'InvalidArgs'
assert err(lambda: d.AddServer('com.wasteheadquarters', 'Packt Like Sardines in a Crushd Tin Box', sv({'waste of space': dbus.ByteArray(b'\0' * 4096)}), sv(), dbus_interface=C1)) == E + 'LimitsExceeded'
# Failed calls consumed numbers: the first success is not c0.
path, sock, addr = add_server(b)
assert path != '/org/freedesktop/DBus/Containers1/c0', path
"#,
    );
}

#[test]
fn stop_listening_keeps_connections_until_they_leave() {
    let bus = bus_with(MULTI_USER);
    scenario(
        &bus,
        r#"
obs = observer()
mgr = conn()
path, sock, addr = add_server(mgr)
cc = Raw(addr)
if os.getuid() == 0:
    def attack():
        a = conn()
        assert err(lambda: drv(a).StopListening(path, dbus_interface=C1)) == E + 'AccessDenied'
        assert err(lambda: drv(a).StopInstance(path, dbus_interface=C1)) == E + 'AccessDenied'
    assert as_user(65534, attack) == 0
no_removed(obs)
drv(mgr).StopListening(path, dbus_interface=C1)
drv(mgr).StopListening(path, dbus_interface=C1)
no_removed(obs)
wait_gone(sock)
assert cc.call('GetId')['type'] == 2
info(mgr, path)
cc.sock.close()
obs.wait(lambda m: removed(m, path))
assert err(lambda: info(mgr, path)) == E + 'NotContainer'
assert err(lambda: drv(mgr).StopListening(path, dbus_interface=C1)) == E + 'NotContainer'
roundtrip(obs)
assert not any(removed(m) for m in obs.stash), 'InstanceRemoved twice'
"#,
    );
}

#[test]
fn stop_without_connections_and_force() {
    let bus = bus_with("");
    scenario(
        &bus,
        r#"
obs = observer()
mgr = conn()
# Never connected: removed right after the reply.
path, sock, addr = add_server(mgr)
drv(mgr).StopListening(path, dbus_interface=C1)
obs.wait(lambda m: removed(m, path))
wait_gone(sock)
assert err(lambda: info(mgr, path)) == E + 'NotContainer'
# Connected then disconnected first.
path, sock, addr = add_server(mgr)
c = Raw(addr); u = c.unique
watch_leaving(obs, u)
c.sock.close()
wait_left(obs, u)
no_removed(obs)
drv(mgr).StopListening(path, dbus_interface=C1)
obs.wait(lambda m: removed(m, path))
wait_gone(sock)
# Force: the contained client is disconnected.
path, sock, addr = add_server(mgr)
c = Raw(addr)
drv(mgr).StopInstance(path, dbus_interface=C1)
assert c.closed()
obs.wait(lambda m: removed(m, path))
wait_gone(sock)
assert err(lambda: info(mgr, path)) == E + 'NotContainer'
assert err(lambda: drv(mgr).StopInstance(path, dbus_interface=C1)) == E + 'NotContainer'
"#,
    );
}

#[test]
fn signal_follows_the_reply() {
    let bus = bus_with("");
    scenario(
        &bus,
        r#"
m = Raw()
m.call('AddMatch', "type='signal',member='InstanceRemoved'")
b = conn()
path, sock, addr = add_server(b)
# Any connection of the owner's uid may stop it; the reply comes before the signal.
serial = m.send(1, '/org/freedesktop/DBus', C1, 'StopListening', DBUS, path, sig='o')
first = m.wait(lambda x: x['reply_serial'] == serial or removed(x, path))
assert first['reply_serial'] == serial and first['type'] == 2, first
m.wait(lambda x: removed(x, path))
"#,
    );
}

#[test]
fn manager_disconnect_stops_listening() {
    let bus = bus_with("");
    scenario(
        &bus,
        r#"
obs = observer()
mgr = Raw()
mgr2 = conn()
path, sock, addr = add_server(mgr2)
cc = Raw(addr)
mgr2.close()
wait_gone(sock)
assert cc.call('GetId')['type'] == 2
info(conn(), path)
no_removed(obs)
cc.sock.close()
obs.wait(lambda m: removed(m, path))
assert err(lambda: info(conn(), path)) == E + 'NotContainer'
"#,
    );
}

/// With a limit of 3 instances: the fourth is refused, stopping one frees its slot.
const THREE_INSTANCES_MAX: &str = r#"
b = conn()
paths = [add_server(b)[0] for _ in range(3)]
assert err(lambda: add_server(b)) == E + 'LimitsExceeded'
drv(b).StopListening(paths[1], dbus_interface=C1)
add_server(b)
assert err(lambda: add_server(b)) == E + 'LimitsExceeded'
"#;

#[test]
fn max_containers() {
    let bus = bus_with(r#"<limit name="max_containers">3</limit>"#);
    scenario(&bus, THREE_INSTANCES_MAX);
}

#[test]
fn max_containers_per_user() {
    let bus = bus_with(
        r#"<limit name="max_containers">5</limit><limit name="max_containers_per_user">3</limit>"#,
    );
    scenario(&bus, THREE_INSTANCES_MAX);
}

#[test]
fn max_connections_per_container() {
    let bus = bus_with(r#"<limit name="max_connections_per_container">3</limit>"#);
    scenario(
        &bus,
        r#"
b = conn()
insts = [add_server(b) for _ in range(2)]
raws = []
for path, sock, addr in insts:
    for _ in range(3):
        s = socket.socket(socket.AF_UNIX); s.connect(sock); raws.append(s)
# The listen queue is first in, first out: when the bus accepts a fourth connection it has
# accepted (and counted) these three.
for path, sock, addr in insts:
    try:
        Raw(addr)
        raise AssertionError('fourth connection accepted')
    except (ConnectionError, OSError):
        pass
raws[0].close()
end = time.time() + 5
while True:
    try:
        c = Raw(insts[0][2]); break
    except (ConnectionError, OSError):
        assert time.time() < end
        time.sleep(0.05)
for path, sock, addr in insts:
    try:
        Raw(addr)
        raise AssertionError('over the limit again')
    except (ConnectionError, OSError):
        pass
"#,
    );
}

#[test]
fn wrong_uid_is_refused_on_container_socket() {
    if !running_as_root() {
        skip(
            "wrong_uid_is_refused_on_container_socket",
            "needs root (to connect as another uid)",
        );
        return;
    }
    let bus = bus_with(MULTI_USER);
    scenario(
        &bus,
        r#"
b = conn()
path, sock, addr = add_server(b)
def intruder():
    try:
        Raw(addr, uid=65534)
    except (ConnectionError, OSError):
        return
    raise AssertionError('other uid accepted')
assert as_user(65534, intruder) == 0
# ANONYMOUS is not offered on container sockets.
s = socket.socket(socket.AF_UNIX); s.connect(sock); s.settimeout(5)
s.sendall(b'\0AUTH ANONYMOUS\r\n')
assert not s.recv(100).startswith(b'OK')
"#,
    );
}

#[test]
fn api_2024_add_server_and_connection_info() {
    let bus = bus_with("");
    scenario(
        &bus,
        r#"
obs = observer()
b = conn()
path, res = drv(b).AddServer('org.flatpak', 'org.gnome.Weather', 'inst-1', sv({'DesktopFile': 'org.gnome.Weather.desktop', 'NetworkAccess': True}), sv({'StopOnDisconnect': False}), dbus_interface=C1)
addr = str(res['Address'])
assert addr.startswith('unix:path='), addr
cc = conn(addr)
r = drv(b).GetConnectionInfo(cc.get_unique_name(), dbus_interface=C1)
assert r[0] == path and r[2] == 'org.flatpak' and r[3] == 'org.gnome.Weather' and r[4] == 'inst-1', r
assert r[5]['DesktopFile'] == 'org.gnome.Weather.desktop' and r[5]['NetworkAccess'] == True, r
# StopOnDisconnect=false: the manager leaving does not stop it.
bu = b.get_unique_name()
watch_leaving(obs, bu)
b.close()
wait_left(obs, bu)
no_removed(obs)
c2 = conn(addr)
drv(c2).GetId(dbus_interface=DBUS)
drv(conn()).StopInstance(path, dbus_interface=C1)
obs.wait(lambda m: removed(m, path))
wait_gone(sock_path(addr))
"#,
    );
}

#[test]
fn stop_on_notify_fd_hang_up() {
    let bus = bus_with("");
    scenario(
        &bus,
        r#"
obs = observer()
b = conn()
r, w = os.pipe()
path, res = drv(b).AddServer('org.flatpak', 'app', 'i', sv(), sv({'StopOnNotify': dbus.types.UnixFd(w)}), dbus_interface=C1)
os.close(w)
addr = str(res['Address'])
c = Raw(addr)
# c's handshake and the round trips are passes of the bus's event loop after it began
# watching the notify fd: an instance wrongly taken for hung up would be gone by now.
roundtrip(obs)
no_removed(obs)
os.close(r)
assert c.closed()
obs.wait(lambda m: removed(m, path))
wait_gone(sock_path(addr))
# Already hung up at call time.
r, w = os.pipe(); os.close(r)
path, res = drv(b).AddServer('org.flatpak', 'app', 'i', sv(), sv({'StopOnNotify': dbus.types.UnixFd(w)}), dbus_interface=C1)
os.close(w)
obs.wait(lambda m: removed(m, path))
"#,
    );
}

#[test]
fn sockets_removed_on_shutdown() {
    let bus = bus_with("");
    let out = run_python(
        &bus,
        "b = conn()\nfor _ in range(2):\n    print(add_server(b, na={'StopOnDisconnect': False})[1])\n",
        Duration::from_secs(30),
    );
    let socks: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    assert_eq!(socks.len(), 2, "{out:#?}");
    for s in &socks {
        assert!(std::path::Path::new(s).exists(), "{s}");
    }
    drop(bus);
    for s in &socks {
        assert!(!std::path::Path::new(s).exists(), "{s} left behind");
    }
}

/// [`scenario`] with `PID` (the daemon's pid) and `DIR` (a directory of the caller's, where
/// it binds its own sockets) defined.
#[track_caller]
fn scenario_in(bus: &TestBus, dir: &TempDir, body: &str) {
    let dir = dir.path().to_str().expect("utf-8 temporary directory");
    scenario(bus, &format!("PID = {}\nDIR = {dir:?}\n{body}", bus.pid()));
}

#[test]
fn caller_provided_socket_2021() {
    let bus = bus_with("");
    let dir = TempDir::new("front");
    scenario_in(
        &bus,
        &dir,
        r#"
obs = observer()
mgr = conn()
where = os.path.join(DIR, 'front end.sock')
s = listener(where)
path, sock, addr = drv(mgr).AddServer('com.example.Proxy', 'app', sv(), with_socket(s), dbus_interface=C1)
# The reply names the caller's path (escaped in the address).
assert bytes(sock) == where.encode() + b'\0', bytes(sock)
assert str(addr).startswith('unix:path=' + where.replace(' ', '%20') + ',guid='), addr
# The bus keeps its own duplicate, close-on-exec and non-blocking.
copies = bus_copies(PID, s)
assert len(copies) == 1, copies
assert copies[0][1] & os.O_CLOEXEC and copies[0][1] & os.O_NONBLOCK, oct(copies[0][1])
# The caller closing its copy changes nothing: the bus accepts on the socket it was given.
keep = os.dup(s.fileno())
s.close()
c = conn(str(addr))
u = c.get_unique_name()
r = drv(mgr).GetConnectionInstance(u, dbus_interface=C1)
assert r[0] == path and r[2] == 'com.example.Proxy' and r[3] == 'app', r
assert C1 + '.Instance' in drv(mgr).GetConnectionCredentials(u, dbus_interface=DBUS)
# Still contained: may not make servers of its own, not even with a socket of its own.
mine = listener(os.path.join(DIR, 'contained.sock'))
assert err(lambda: drv(c).AddServer('a.b', 'x', sv(), with_socket(mine), dbus_interface=C1)) == E + 'AccessDenied'
assert bus_copies(PID, mine) == []
# StopListening: the bus closes its copy (before replying) and leaves the file alone.
drv(mgr).StopListening(path, dbus_interface=C1)
assert bus_copies(PID, keep) == []
assert stat.S_ISSOCK(os.stat(where).st_mode)
# The socket is the caller's again: a new client waits in its backlog for the caller.
late = socket.socket(socket.AF_UNIX)
late.connect(where)
keep = socket.socket(fileno=keep)
keep.settimeout(5)
a, _ = keep.accept()
late.sendall(b'x')
assert a.recv(1) == b'x'
# The contained connection stays until it leaves.
assert drv(c).GetId(dbus_interface=DBUS)
c.close()
obs.wait(lambda m: removed(m, path))
assert stat.S_ISSOCK(os.stat(where).st_mode)
# StopOnDisconnect (the default) and StopInstance do not unlink either.
for stop in ('disconnect', 'instance'):
    m2 = conn()
    w2 = os.path.join(DIR, stop + '.sock')
    s2 = listener(w2)
    p2, _, a2 = drv(m2).AddServer('com.example.Proxy', 'app', sv(), with_socket(s2), dbus_interface=C1)
    assert len(bus_copies(PID, s2)) == 1
    if stop == 'disconnect':
        m2.close()
    else:
        drv(m2).StopInstance(p2, dbus_interface=C1)
    obs.wait(lambda m: removed(m, p2))
    assert bus_copies(PID, s2) == []
    assert stat.S_ISSOCK(os.stat(w2).st_mode), w2
"#,
    );
}

#[test]
fn caller_provided_socket_2024_and_abstract() {
    let bus = bus_with("");
    let dir = TempDir::new("front");
    scenario_in(
        &bus,
        &dir,
        r#"
mgr = conn()
where = os.path.join(DIR, 'front.sock')
s = listener(where)
path, res = drv(mgr).AddServer('org.flatpak', 'org.example.App', 'run-7', sv(), with_socket(s), dbus_interface=C1)
addr = str(res['Address'])
assert addr.startswith('unix:path=' + where + ',guid='), addr
c = conn(addr)
r = drv(mgr).GetConnectionInfo(c.get_unique_name(), dbus_interface=C1)
assert r[0] == path and r[2:5] == ('org.flatpak', 'org.example.App', 'run-7'), r
# An abstract socket: the address names it; the 2021 path is empty (no file).
name = 'sluicebus-test-%d-front' % os.getpid()
a = listener('\0' + name)
path, res = drv(mgr).AddServer('org.flatpak', 'app', 'i', sv(), with_socket(a), dbus_interface=C1)
addr = str(res['Address'])
assert addr.startswith('unix:abstract=' + name + ',guid='), addr
c = conn(addr)
assert drv(mgr).GetConnectionInfo(c.get_unique_name(), dbus_interface=C1)[0] == path
b = listener('')  # autobind: the kernel picks an abstract name
path, sock, addr = drv(mgr).AddServer('com.example.Proxy', 'app', sv(), with_socket(b), dbus_interface=C1)
assert bytes(sock) == b'\0', bytes(sock)
assert str(addr) == 'unix:abstract=' + b.getsockname()[1:].decode() + ',guid=' + str(addr).split(',guid=')[1], addr
c = conn(str(addr))
assert drv(mgr).GetConnectionInstance(c.get_unique_name(), dbus_interface=C1)[0] == path
"#,
    );
}

#[test]
fn caller_provided_socket_refusals() {
    let mut bus = bus_with("");
    let dir = TempDir::new("front");
    scenario_in(
        &bus,
        &dir,
        r#"
mgr = conn()
def add(s, api=2021):
    if api == 2021:
        return drv(mgr).AddServer('com.example.Proxy', 'app', sv(), with_socket(s), dbus_interface=C1)
    return drv(mgr).AddServer('org.flatpak', 'app', 'i', sv(), with_socket(s), dbus_interface=C1)
plain = os.path.join(DIR, 'file')
open(plain, 'w').close()
with open(plain) as f:
    assert_refused(lambda: add(f), 'is not a socket')
r, w = os.pipe()
assert_refused(lambda: add(r), 'is not a socket')
assert_refused(lambda: add(w, 2024), 'is not a socket')
assert_refused(lambda: add(listener(os.path.join(DIR, 'idle'), listen=False)), 'is not listening')
assert_refused(lambda: add(socket.socket(socket.AF_UNIX)), 'is not listening')
assert_refused(lambda: add(listener(os.path.join(DIR, 'dgram'), kind=socket.SOCK_DGRAM, listen=False)), 'SOCK_STREAM')
assert_refused(lambda: add(listener(os.path.join(DIR, 'seq'), kind=socket.SOCK_SEQPACKET), 2024), 'SOCK_STREAM')
assert_refused(lambda: add(listener(('127.0.0.1', 0), family=socket.AF_INET)), 'AF_UNIX')
# Connected, not listening: one end of a socket pair.
x, y = socket.socketpair()
assert_refused(lambda: add(x), 'is not listening')
# Bound to a relative path: relative to a directory the bus does not know.
os.chdir(DIR)
assert_refused(lambda: add(listener('relative.sock')), 'relative path')
# Twice the same socket: the second instance would steal the first one's clients.
s = listener(os.path.join(DIR, 'once'))
path, _, addr = add(s)
assert_refused(lambda: add(s), 'already a listening socket of this bus')
assert_refused(lambda: add(s.dup(), 2024), 'already a listening socket of this bus')
assert len(bus_copies(PID, s)) == 1
# Not an fd at all.
assert err(lambda: drv(mgr).AddServer('a.b', 'x', sv(), sv({'Socket': os.path.join(DIR, 'once')}), dbus_interface=C1)) == E + 'InvalidArgs'
assert err(lambda: drv(mgr).AddServer('a.b', 'x', 'i', sv(), sv({'Socket': dbus.UInt32(3)}), dbus_interface=C1)) == E + 'InvalidArgs'
# An fd index past the fds sent: the message is valid (the index is its receiver's
# business, as in dbus-daemon), and the bus, as that receiver, answers InvalidArgs.
for nfds in (0, 1):
    liar = Raw(unix_fds=True)
    serial = add_server_raw_socket(liar, 1, nfds)
    m = liar.wait(lambda m: m['reply_serial'] == serial)
    assert m['error'] == E + 'InvalidArgs', m
    assert 'which was not sent' in m['args'][0], m
# A valid call from a well-behaved client still works; the refused ones created nothing.
ok = listener(os.path.join(DIR, 'ok'))
p2, _, a2 = add(ok)
c = conn(str(a2))
assert drv(mgr).GetConnectionInstance(c.get_unique_name(), dbus_interface=C1)[0] == p2
"#,
    );
    bus.assert_alive();
}

#[test]
fn caller_provided_socket_outlives_the_bus() {
    let bus = bus_with("");
    let dir = TempDir::new("front");
    scenario_in(
        &bus,
        &dir,
        r#"
mgr = conn()
s = listener(os.path.join(DIR, 'front.sock'))
na = with_socket(s, {'StopOnDisconnect': False})
path, sock, addr = drv(mgr).AddServer('com.example.Proxy', 'app', sv(), na, dbus_interface=C1)
c = conn(str(addr))
assert drv(c).GetId(dbus_interface=DBUS)
"#,
    );
    let sock = dir.path().join("front.sock");
    // The scenario's process (and its copy of the socket) is gone; the instance lives on,
    // and the bus still serves the socket.
    let mut c = common::RawConn::connect(&format!("unix:path={}", sock.display()));
    c.auth_external();
    c.hello();
    drop(c);
    // Bus shutdown (SIGTERM, reaped): the caller's file stays.
    drop(bus);
    assert!(sock.exists(), "{} removed by the bus", sock.display());
}

#[test]
fn caller_provided_socket_made_blocking() {
    let mut bus = bus_with("");
    let dir = TempDir::new("front");
    scenario_in(
        &bus,
        &dir,
        r#"
import fcntl, threading
obs = observer()
mgr = conn()
where = os.path.join(DIR, 'front.sock')
s = listener(where)
path, sock, addr = drv(mgr).AddServer('com.example.Proxy', 'app', sv(), with_socket(s), dbus_interface=C1)
c = conn(str(addr))
# The caller clears O_NONBLOCK on the description it shares with the bus, then a client
# connects: a bus that accepted now would block until the next client. It stops serving
# that socket instead (the instance lives on with its connection).
s.setblocking(True)
late = socket.socket(socket.AF_UNIX)
late.connect(where)
roundtrip(obs)
no_removed(obs)
deadline = time.time() + 10
while bus_copies(PID, s):
    assert time.time() < deadline, 'the bus still holds the socket'
    roundtrip(obs)
assert drv(c).GetId(dbus_interface=DBUS)
assert drv(mgr).GetConnectionInstance(c.get_unique_name(), dbus_interface=C1)[0] == path
c.close()
obs.wait(lambda m: removed(m, path))
assert stat.S_ISSOCK(os.stat(where).st_mode)
# The same while the flag flips back and forth under the bus's feet: whatever the bus
# catches, it neither hangs nor dies.
s2 = listener(os.path.join(DIR, 'flip.sock'))
p2, _, a2 = drv(mgr).AddServer('com.example.Proxy', 'app', sv(), with_socket(s2), dbus_interface=C1)
stop = []
def flip():
    fd = s2.fileno()
    while not stop:
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, fl ^ os.O_NONBLOCK)
t = threading.Thread(target=flip)
t.start()
try:
    for _ in range(200):
        if not bus_copies(PID, s2):
            break
        x = socket.socket(socket.AF_UNIX)
        x.setblocking(False)
        try:
            x.connect(sock_path(str(a2)))
        except BlockingIOError:
            pass  # the backlog is full: the bus stopped accepting
        x.close()
        roundtrip(obs)
finally:
    stop.append(1)
    t.join()
assert drv(conn()).GetId(dbus_interface=DBUS)
"#,
    );
    bus.assert_alive();
}
