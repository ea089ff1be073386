"""Helpers shared by every Containers1 scenario of tests/containers.rs.

A scenario is python run as `python3 -c SCRIPT ADDRESS` whose first line is
`from containers_prelude import *` (tests/py is on PYTHONPATH): dbus-python for calls
with a{sv}, plus Raw, a tiny raw client for signals and header field 10.
"""
import os, sys, time, socket, struct, stat, errno
import dbus, dbus.bus, dbus.lowlevel
ADDR = sys.argv[1]
C1 = 'org.freedesktop.DBus.Containers1'
DBUS = 'org.freedesktop.DBus'
E = 'org.freedesktop.DBus.Error.'

def conn(addr=ADDR):
    return dbus.bus.BusConnection(addr)

def drv(b):
    return b.get_object(DBUS, '/org/freedesktop/DBus', introspect=False)

def sv(d=None):
    return dbus.Dictionary(d or {}, signature='sv')

def add_server(b, t='com.example.NotFlatpak', n='sample-app', md=None, na=None):
    path, sock, addr = drv(b).AddServer(t, n, sv(md), sv(na), dbus_interface=C1)
    sock = bytes(sock)
    assert sock.endswith(b'\0'), sock
    sock = sock[:-1].decode()
    assert sock.startswith('/'), sock
    assert stat.S_ISSOCK(os.stat(sock).st_mode), sock
    assert addr.startswith('unix:') and ';' not in addr and ':' not in addr[5:], addr
    assert path.startswith('/org/freedesktop/DBus/Containers1/c'), path
    return path, sock, str(addr)

def err(f):
    try:
        f()
    except dbus.exceptions.DBusException as e:
        return e.get_dbus_name()
    raise AssertionError('no error')

def info(b, path):
    return drv(b).GetInstanceInfo(dbus.ObjectPath(path), dbus_interface=C1)

def wait_gone(sock, timeout=5):
    end = time.time() + timeout
    while os.path.exists(sock):
        assert time.time() < end, 'socket file still there: ' + sock
        time.sleep(0.02)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sock)
        raise AssertionError('connect succeeded')
    except OSError as e:
        assert e.errno in (errno.ENOENT, errno.ECONNREFUSED), e

def sock_path(addr):
    return addr.split('path=', 1)[1].split(',', 1)[0]

def pad(b, n):
    return b + b'\0' * ((-len(b)) % n)

class Raw:
    """Minimal client that sees every header field (for field 10) and signal."""
    def __init__(self, addr=ADDR, uid=None, hello=True, unix_fds=False):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(sock_path(addr))
        self.buf = b''
        self.serial = 0
        self.stash = []
        me = os.getuid() if uid is None else uid
        self.sock.sendall(b'\0AUTH EXTERNAL ' + str(me).encode().hex().encode() + b'\r\n')
        line = self.line()
        if not line.startswith(b'OK'):
            raise ConnectionError(line)
        if unix_fds:
            self.sock.sendall(b'NEGOTIATE_UNIX_FD\r\n')
            line = self.line()
            if line != b'AGREE_UNIX_FD':
                raise ConnectionError(line)
        self.sock.sendall(b'BEGIN\r\n')
        if hello:
            self.unique = self.call('Hello')['args'][0]

    def line(self):
        while b'\r\n' not in self.buf:
            d = self.sock.recv(4096)
            if not d:
                raise ConnectionError('closed')
            self.buf += d
        l, self.buf = self.buf.split(b'\r\n', 1)
        return l

    def send(self, mtype, path, iface, member, dest=None, s=None, field10=None, sig='s'):
        self.serial += 1
        fields = b''
        def f(code, sig, val):
            nonlocal fields
            fields = pad(fields, 8) + bytes([code, 1, ord(sig), 0]) + struct.pack('<I', len(val)) + val + b'\0'
        f(1, 'o', path.encode())
        f(2, 's', iface.encode())
        f(3, 's', member.encode())
        if dest:
            f(6, 's', dest.encode())
        if field10:
            f(10, 'o', field10.encode())
        body = b''
        if s is not None:
            fields = pad(fields, 8) + bytes([8, 1, ord('g'), 0, 1]) + sig.encode() + b'\0'
            body = struct.pack('<I', len(s)) + s.encode() + b'\0'
        hdr = b'l' + bytes([mtype, 0, 1]) + struct.pack('<III', len(body), self.serial, len(fields)) + fields
        self.sock.sendall(pad(hdr, 8) + body)
        return self.serial

    def call(self, member, s=None, iface=DBUS, sig='s'):
        serial = self.send(1, '/org/freedesktop/DBus', iface, member, DBUS, s, sig=sig)
        while True:
            m = self.recv(stash=False)
            if m['reply_serial'] == serial:
                return m
            self.stash.append(m)

    def recv(self, timeout=5, stash=True):
        if stash and self.stash:
            return self.stash.pop(0)
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 16:
                blen, _, flen = struct.unpack('<III', self.buf[4:16])
                start = 16 + flen + ((-flen) % 8)
                if len(self.buf) >= start + blen:
                    raw, self.buf = self.buf[:start + blen], self.buf[start + blen:]
                    return self.parse(raw, start)
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionError('closed')
            self.buf += d

    def parse(self, raw, start):
        assert raw[0:1] == b'l'
        pos, end = 16, 16 + struct.unpack('<I', raw[12:16])[0]
        fields = {}
        while pos < end:
            pos += (-pos) % 8
            code, slen = raw[pos], raw[pos + 1]
            sig = raw[pos + 2:pos + 2 + slen].decode()
            pos += 3 + slen
            if sig in ('s', 'o'):
                pos += (-pos) % 4
                n = struct.unpack('<I', raw[pos:pos + 4])[0]
                fields[code] = raw[pos + 4:pos + 4 + n].decode()
                pos += 5 + n
            elif sig == 'g':
                n = raw[pos]
                fields[code] = raw[pos + 1:pos + 1 + n].decode()
                pos += 2 + n
            elif sig == 'u':
                pos += (-pos) % 4
                fields[code] = struct.unpack('<I', raw[pos:pos + 4])[0]
                pos += 4
            else:
                raise AssertionError('field type ' + sig)
        args = []
        sig = fields.get(8, '')
        if sig[:1] in ('s', 'o'):
            n = struct.unpack('<I', raw[start:start + 4])[0]
            args.append(raw[start + 4:start + 4 + n].decode())
        return {'type': raw[1], 'fields': fields, 'member': fields.get(3), 'args': args,
                'reply_serial': fields.get(5), 'error': fields.get(4)}

    def wait(self, pred, timeout=5):
        end = time.time() + timeout
        while True:
            for i, m in enumerate(self.stash):
                if pred(m):
                    return self.stash.pop(i)
            left = end - time.time()
            if left <= 0:
                raise AssertionError('timed out waiting')
            m = self.recv(left, stash=False)
            if pred(m):
                return m
            self.stash.append(m)

    def closed(self, timeout=5):
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except socket.timeout:
            return False
        except OSError:
            return True

def removed(m, path=None):
    return m['type'] == 4 and m['member'] == 'InstanceRemoved' and (path is None or m['args'] == [path])

def observer():
    o = Raw()
    o.call('AddMatch', "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus.Containers1',member='InstanceRemoved'")
    return o

def roundtrip(o):
    m = o.call('GetId')
    assert m['type'] == 2, m

def no_removed(o):
    roundtrip(o)
    assert not any(removed(m) for m in o.stash), o.stash

def watch_leaving(o, unique):
    """Make Raw o see connection `unique` leave (see wait_left)."""
    o.call('AddMatch', "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='%s'" % unique)

def wait_left(o, unique):
    """Wait until the bus announces that `unique` left. The announcement is a sentinel: the
    bus has handled everything that connection sent, and its names, before it."""
    o.wait(lambda m: m['type'] == 4 and m['member'] == 'NameOwnerChanged' and m['args'] == [unique])

def signal(b, member):
    b.send_message(dbus.lowlevel.SignalMessage('/', 'com.example.Shouting', member))
    b.flush()

def as_user(uid, fn):
    """Run fn in a child with another uid; returns its exit status (0 = fn returned)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            fn()
            os._exit(0)
        except BaseException as e:
            sys.stderr.write('child: %r\n' % (e,))
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

# ---- AddServer's Socket named argument (a caller-provided listening socket) ----------

def listener(name, family=socket.AF_UNIX, kind=socket.SOCK_STREAM, listen=True):
    """A socket bound to `name` (a path, '\\0abstract', '' to autobind), listening unless
    told otherwise."""
    s = socket.socket(family, kind)
    s.bind(name)
    if listen:
        s.listen(16)
    return s

def with_socket(s, na=None):
    """Named arguments passing `s` (a socket, a file, or an fd number) as Socket.

    Mind that the bus shares the socket's open file description: python calls that set a
    socket's blocking mode (settimeout, setblocking, dup) clear O_NONBLOCK for the bus too,
    and the bus stops serving a socket made blocking. Duplicate with os.dup."""
    d = dict(na or {})
    d['Socket'] = dbus.types.UnixFd(s)
    return sv(d)

def bus_copies(pid, s):
    """(fd, open flags) of each fd of process `pid` that is the socket `s` (same inode):
    the bus's duplicates of a socket we passed it."""
    ino = os.fstat(s if isinstance(s, int) else s.fileno()).st_ino
    out = []
    for fd in os.listdir('/proc/%d/fd' % pid):
        try:
            if os.readlink('/proc/%d/fd/%s' % (pid, fd)) != 'socket:[%d]' % ino:
                continue
            with open('/proc/%d/fdinfo/%s' % (pid, fd)) as f:
                flags = int(f.read().split('flags:', 1)[1].split()[0], 8)
        except (FileNotFoundError, ProcessLookupError):
            continue
        out.append((int(fd), flags))
    return out

def assert_refused(f, *words):
    """f() fails with InvalidArgs whose message names Socket and has `words`."""
    try:
        f()
    except dbus.exceptions.DBusException as e:
        assert e.get_dbus_name() == E + 'InvalidArgs', e
        msg = e.get_dbus_message()
        assert 'Socket' in msg and all(w in msg for w in words), msg
        return
    raise AssertionError('no error')

def marshal_str(buf, s):
    buf = pad(buf, 4)
    return buf + struct.pack('<I', len(s)) + s.encode() + b'\0'

def add_server_raw_socket(r, index, nfds):
    """Send AddServer (2021) from Raw `r` with Socket = fd `index`, attaching `nfds` fds
    (UNIX_FDS = nfds) whatever the index says; returns the serial."""
    body = marshal_str(b'', 'com.example.Proxy')
    body = marshal_str(body, 'app')
    body = pad(body, 4) + struct.pack('<I', 0)
    body = pad(body, 8)
    entry = marshal_str(b'', 'Socket') + bytes([1]) + b'h\0'
    entry = pad(entry, 4) + struct.pack('<I', index)
    body = pad(body, 4) + struct.pack('<I', len(entry))
    body = pad(body, 8) + entry
    r.serial += 1
    fields = b''
    def f(code, sig, val):
        nonlocal fields
        fields = pad(fields, 8) + bytes([code, 1, ord(sig), 0])
        if sig == 'u':
            fields += struct.pack('<I', val)
        elif sig == 'g':
            fields += bytes([len(val)]) + val.encode() + b'\0'
        else:
            fields += struct.pack('<I', len(val)) + val.encode() + b'\0'
    f(1, 'o', '/org/freedesktop/DBus')
    f(2, 's', C1)
    f(3, 's', 'AddServer')
    f(6, 's', DBUS)
    f(8, 'g', 'ssa{sv}a{sv}')
    f(9, 'u', nfds)
    hdr = b'l' + bytes([1, 0, 1]) + struct.pack('<III', len(body), r.serial, len(fields)) + fields
    fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(nfds)]
    socket.send_fds(r.sock, [pad(hdr, 8) + body], fds)
    for fd in fds:
        os.close(fd)
    return r.serial
