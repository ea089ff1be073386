//! Writes the seed corpora for the fuzz targets: `cargo run -p sluicebus-seedgen -- DIR`
//! (run from fuzz/) creates DIR/{message,body,auth,match_rule,busconfig,bus}/.

use std::fs;
use std::path::Path;
use std::rc::Rc;

use sluicebus::wire::marshal::{BodyWriter, MessageBuilder};
use sluicebus::wire::message::Message;

#[path = "../../src/script.rs"]
#[allow(dead_code)]
mod script;
use script::Script;

fn messages() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let empty = BodyWriter::new();
    v.push(
        MessageBuilder::method_call(
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "Hello",
        )
        .destination("org.freedesktop.DBus")
        .flags(0)
        .build(1, &empty),
    );
    let mut b = BodyWriter::new();
    b.str("org.example.Name").u32(4);
    v.push(
        MessageBuilder::method_call(
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "RequestName",
        )
        .destination("org.freedesktop.DBus")
        .flags(0)
        .build(2, &b),
    );
    let mut b = BodyWriter::new();
    b.str("org.example.Name").str("").str(":1.7");
    v.push(
        MessageBuilder::signal(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameOwnerChanged",
        )
        .sender("org.freedesktop.DBus")
        .build(3, &b),
    );
    let mut b = BodyWriter::new();
    b.object_path("/a/b")
        .array("{sv}", |w| {
            w.dict_entry(|w| {
                w.str("k").variant("i", |w| {
                    w.i32(-1);
                });
            })
            .dict_entry(|w| {
                w.str("s").variant("(yd)", |w| {
                    w.structure("yd", |w| {
                        w.u8(7).f64(1.5);
                    });
                });
            });
        })
        .str_array(["x", "yy"])
        .byte_array(b"\x00\x01\x02")
        .bool(true)
        .i16(-2)
        .u16(2)
        .i64(-3)
        .u64(3)
        .signature_value("a{sv}");
    v.push(
        MessageBuilder::signal("/a/b", "org.example.Iface", "Changed")
            .destination(":1.9")
            .build(4, &b),
    );
    let mut b = BodyWriter::new();
    b.str("no such method");
    v.push(MessageBuilder::error("org.freedesktop.DBus.Error.UnknownMethod", 9).build(5, &b));
    let mut b = BodyWriter::new();
    b.fd(0).fd(1);
    v.push(
        MessageBuilder::method_return(6)
            .unix_fds(2)
            .destination(":1.2")
            .build(6, &b),
    );
    v.push(MessageBuilder::method_return(7).build(7, &empty));
    v.push(big_endian_ping());
    v.push(with_unknown_field());
    v
}

/// `B`-order METHOD_CALL path "/" member "Ping", body "s" = "hi".
fn big_endian_ping() -> Vec<u8> {
    let mut m = vec![b'B', 1, 0, 1, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 0];
    m.extend_from_slice(&[1, 1, b'o', 0, 0, 0, 0, 1, b'/', 0, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&[
        3, 1, b's', 0, 0, 0, 0, 4, b'P', b'i', b'n', b'g', 0, 0, 0, 0,
    ]);
    m.extend_from_slice(&[8, 1, b'g', 0, 1, b's', 0]);
    let fields_len = (m.len() - 16) as u32;
    m[12..16].copy_from_slice(&fields_len.to_be_bytes());
    m.push(0);
    m.extend_from_slice(&[0, 0, 0, 2, b'h', b'i', 0]);
    m
}

/// `l`-order METHOD_RETURN with an unknown field 10 (a string) and an unknown field 42
/// holding a variant `ai`: relaying must drop both.
fn with_unknown_field() -> Vec<u8> {
    let mut m = vec![b'l', 2, 0, 1, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&[5, 1, b'u', 0, 1, 0, 0, 0]);
    m.extend_from_slice(&[10, 1, b's', 0, 3, 0, 0, 0, b'/', b'c', b'1', 0, 0, 0, 0, 0]);
    m.extend_from_slice(&[
        42, 1, b'v', 0, 2, b'a', b'i', 0, 8, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0,
    ]);
    let fields_len = (m.len() - 16) as u32;
    m[12..16].copy_from_slice(&fields_len.to_le_bytes());
    while m.len() % 8 != 0 {
        m.push(0);
    }
    m
}

fn auth_transcripts() -> Vec<&'static [u8]> {
    vec![
        b"\0AUTH EXTERNAL 31303030\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nl\x01\x00\x01",
        b"\0AUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n",
        b"\0AUTH\r\nAUTH ANONYMOUS 74657374\r\nBEGIN\r\n",
        b"\0AUTH DBUS_COOKIE_SHA1 31303030\r\nCANCEL\r\nAUTH EXTERNAL 31303031\r\nAUTH EXTERNAL\r\nDATA 31303030\r\nBEGIN\r\n",
        b"\0AUTH EXTERNAL 31303030\r\nERROR\r\nCANCEL\r\nAUTH ANONYMOUS\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n",
        b"\0BEGIN\r\nDATA\r\nREJECTED\r\nOK 1234\r\n",
    ]
}

fn match_rules() -> Vec<&'static str> {
    vec![
        "",
        "type='signal'",
        "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='org.example.Name'",
        "type='method_call',path='/org/example',destination=':1.5'",
        "path_namespace='/org/example',arg0namespace='org.example'",
        "eavesdrop=true,type='error'",
        "arg1path='/a/b/',arg2='it'\\''s',arg63='x'",
        "interface = 'a.b' , member='C'",
        "type='signal',arg0='',arg3path='/'",
    ]
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    fs::write(dir.join(name), data).expect("write seed");
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "seeds".to_owned());
    let root = Path::new(&root);
    for t in ["message", "body", "auth", "match_rule", "busconfig", "bus"] {
        fs::create_dir_all(root.join(t)).expect("create seed dir");
    }
    for (i, m) in messages().iter().enumerate() {
        let n = sluicebus::wire::message::declared_fds(m).unwrap_or(0) as usize;
        let parsed = Message::parse(Rc::from(m.as_slice()), n)
            .unwrap_or_else(|e| panic!("seed {i} does not parse: {e:?}"));
        write(&root.join("message"), &format!("msg{i}"), m);
        // body target layout: signature length, fd count, signature, body.
        let sig = parsed.signature().as_bytes();
        let mut b = vec![sig.len() as u8, n as u8];
        b.extend_from_slice(sig);
        b.extend_from_slice(parsed.body());
        write(&root.join("body"), &format!("body{i}"), &b);
    }
    for (i, t) in auth_transcripts().iter().enumerate() {
        // auth target layout: 2-byte little-endian split point, then the client bytes.
        for (j, split) in [0u16, 9, 0xffff].iter().enumerate() {
            let mut b = split.to_le_bytes().to_vec();
            b.extend_from_slice(t);
            write(&root.join("auth"), &format!("auth{i}_{j}"), &b);
        }
    }
    for (i, r) in match_rules().iter().enumerate() {
        write(&root.join("match_rule"), &format!("rule{i}"), r.as_bytes());
    }
    for (i, (name, text)) in busconfigs().iter().enumerate() {
        write(
            &root.join("busconfig"),
            &format!("conf{i}-{name}"),
            text.as_bytes(),
        );
    }
    for (i, (name, script)) in bus_scripts().iter().enumerate() {
        write(&root.join("bus"), &format!("script{i}-{name}"), script);
    }
}

/// Configuration files: the stock session and system configurations as dbus installs them
/// (read from /usr/share/dbus-1 when present, so the seeds follow the distribution's), and
/// hand-written ones for the elements and attributes those do not use. Relative includes
/// name the files the `busconfig` target provides beside its input.
fn busconfigs() -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    for (name, path) in [
        ("session", sluicebus::config::SESSION_CONFIG_FILE),
        ("system", sluicebus::config::SYSTEM_CONFIG_FILE),
    ] {
        match fs::read_to_string(path) {
            Ok(text) => v.push((name, text)),
            Err(e) => eprintln!("seedgen: {path}: {e} (seed left out)"),
        }
    }
    let own: [(&str, &str); 5] = [
        (
            "everything",
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <user>4242</user>
  <fork/>
  <keep_umask/>
  <syslog/>
  <pidfile>/run/sluicebus.pid</pidfile>
  <listen>unix:path=/run/a</listen>
  <listen>tcp:host=localhost,port=0</listen>
  <auth>EXTERNAL</auth>
  <auth>ANONYMOUS</auth>
  <allow_anonymous/>
  <servicedir>/usr/share/dbus-1/services</servicedir>
  <standard_system_servicedirs/>
  <servicehelper>/usr/lib/dbus-1.0/dbus-daemon-launch-helper</servicehelper>
  <include>inc.conf</include>
  <include ignore_missing="yes">missing.conf</include>
  <include if_selinux_enabled="yes">broken.conf</include>
  <includedir>conf.d</includedir>
  <includedir>empty.d</includedir>
  <policy context="default">
    <allow user="*"/>
    <deny group="27"/>
    <allow send_destination="org.example.A" send_interface="org.example.I" send_member="M" send_path="/a"/>
    <deny send_destination_prefix="org.example.B" send_type="signal" send_broadcast="true"/>
    <allow send_error="org.example.Error" send_requested_reply="false"/>
    <allow receive_sender="org.example.A" receive_interface="org.example.I" receive_type="error"/>
    <deny receive_member="Secret" receive_path="/s" eavesdrop="true"/>
    <allow own_prefix="org.example"/>
    <deny own="org.example.Reserved"/>
    <allow send_destination="*" max_fds="2" min_fds="1"/>
  </policy>
  <policy user="root"><allow own="*"/></policy>
  <policy group="1000"><allow send_interface="*"/></policy>
  <policy at_console="true"><allow send_destination="org.example.Console"/></policy>
  <policy context="mandatory"><deny send_interface="org.example.Mandatory"/></policy>
  <limit name="max_incoming_bytes">1000000</limit>
  <limit name="max_outgoing_bytes">1000000</limit>
  <limit name="max_message_size">65536</limit>
  <limit name="max_message_unix_fds">8</limit>
  <limit name="service_start_timeout">1000</limit>
  <limit name="auth_timeout">5000</limit>
  <limit name="reply_timeout">-1</limit>
  <limit name="max_containers">4</limit>
  <limit name="max_connections_per_container">2</limit>
  <selinux><associate own="org.example.A" context="system_u:object_r:a_t"/></selinux>
  <apparmor mode="disabled"/>
</busconfig>
"#,
        ),
        (
            "includes",
            "<busconfig>\n<include>loop.conf</include>\n<include>broken.conf</include>\n</busconfig>",
        ),
        ("empty", "<busconfig/>"),
        (
            "errors",
            "<busconfig>\n<limit name=\"max_names_per_connection\">x</limit>\n<policy context=\"bogus\"/>\n</busconfig>",
        ),
        (
            "entities",
            "<?xml version=\"1.0\"?><!-- c --><busconfig><listen>unix:path=/run/&amp;&#x41;</listen><auth><![CDATA[EXTERNAL]]></auth></busconfig>",
        ),
    ];
    v.extend(own.iter().map(|(n, t)| (*n, t.to_string())));
    v
}

const DBUS: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";
const C1: &str = "org.freedesktop.DBus.Containers1";

/// A client's messages, with serials counted per client.
struct Client {
    serial: u32,
}

impl Client {
    fn new() -> Client {
        Client { serial: 0 }
    }
    fn next(&mut self) -> u32 {
        self.serial += 1;
        self.serial
    }
    fn call(
        &mut self,
        dest: &str,
        path: &str,
        iface: &str,
        member: &str,
        body: &BodyWriter,
    ) -> Vec<u8> {
        let s = self.next();
        MessageBuilder::method_call(path, Some(iface), member)
            .destination(dest)
            .flags(0)
            .build(s, body)
    }
    fn driver(&mut self, iface: &str, member: &str, body: &BodyWriter) -> Vec<u8> {
        self.call(DBUS, DBUS_PATH, iface, member, body)
    }
    fn hello(&mut self) -> Vec<u8> {
        self.driver(DBUS, "Hello", &BodyWriter::new())
    }
    fn reply(&mut self, to: &str, reply_serial: u32, body: &BodyWriter) -> Vec<u8> {
        let s = self.next();
        MessageBuilder::method_return(reply_serial)
            .destination(to)
            .flags(0)
            .build(s, body)
    }
    fn signal(&mut self, iface: &str, member: &str, body: &BodyWriter) -> Vec<u8> {
        let s = self.next();
        MessageBuilder::signal("/org/example", iface, member)
            .flags(0)
            .build(s, body)
    }
}

fn s1(v: &str) -> BodyWriter {
    let mut b = BodyWriter::new();
    b.str(v);
    b
}

fn su(v: &str, n: u32) -> BodyWriter {
    let mut b = BodyWriter::new();
    b.str(v).u32(n);
    b
}

/// `CONNECT` argument: uid index (`script::UIDS`), fd passing, authenticated at once.
const USER: u8 = 1 | 0x40;
const ROOT: u8 = 0x40;
const OTHER: u8 = 2 | 0x40;

/// Scripts for the `bus` target: real transcripts (Hello, RequestName, AddMatch, a call and
/// its reply, a signal, Containers1 AddServer and a contained peer, a monitor, a slow
/// reader, reply timeouts, a reload, partial writes and reads).
fn bus_scripts() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();

    // A service and a client: names, a match rule, a call and its reply, a signal.
    let (mut a, mut b) = (Client::new(), Client::new());
    let mut s = Script::new(0);
    s.connect(0, USER).send(0, &a.hello());
    s.send(
        0,
        &a.driver(DBUS, "RequestName", &su("org.example.Service", 4)),
    );
    s.connect(1, USER).send(1, &b.hello());
    s.send(
        1,
        &b.driver(
            DBUS,
            "AddMatch",
            &s1("type='signal',sender='org.example.Service'"),
        ),
    );
    s.drain();
    let call = b.call(
        "org.example.Service",
        "/org/example",
        "org.example.I",
        "Ping",
        &s1("hi"),
    );
    let call_serial = b.serial;
    s.send(1, &call).drain();
    s.send(0, &a.reply(":1.1", call_serial, &s1("pong")));
    s.send(0, &a.signal("org.example.I", "Changed", &su("x", 1)));
    s.send(
        1,
        &b.driver(
            DBUS,
            "RemoveMatch",
            &s1("type='signal',sender='org.example.Service'"),
        ),
    );
    s.send(
        0,
        &a.driver(DBUS, "ReleaseName", &s1("org.example.Service")),
    );
    s.drain().hangup(1).hangup(0);
    v.push(("call-reply-signal", s.0));

    // Containers1: AddServer, a peer on the instance's socket, credentials, StopInstance.
    let (mut a, mut b) = (Client::new(), Client::new());
    let mut s = Script::new(0);
    s.connect(0, USER).send(0, &a.hello());
    let mut body = BodyWriter::new();
    body.str("org.example.Sandbox").str("app");
    body.array("{sv}", |m| {
        m.dict_entry(|e| {
            e.str("Label").variant("s", |v| {
                v.str("x");
            });
        });
    });
    body.array("{sv}", |m| {
        m.dict_entry(|e| {
            e.str("StopOnDisconnect").variant("b", |v| {
                v.bool(true);
            });
        });
    });
    s.send(0, &a.driver(C1, "AddServer", &body)).drain();
    s.connect(1, USER | 4).send(1, &b.hello());
    s.send(1, &b.driver(DBUS, "GetConnectionCredentials", &s1(":1.1")));
    s.send(1, &b.driver(C1, "GetConnectionInstance", &s1(":1.1")));
    s.send(
        0,
        &a.driver(DBUS, "RequestName", &su("org.example.Host", 0)),
    );
    s.send(
        1,
        &b.call(
            "org.example.Host",
            "/",
            "org.example.I",
            "Ping",
            &BodyWriter::new(),
        ),
    );
    s.drain();
    s.send(
        0,
        &a.driver(C1, "StopInstance", &{
            let mut w = BodyWriter::new();
            w.object_path("/org/freedesktop/DBus/Containers1/c0");
            w
        }),
    );
    s.drain().hangup(0).drain();
    v.push(("containers-addserver", s.0));

    // A filtered instance (Allow rules) and a contained peer calling through it.
    let (mut a, mut b) = (Client::new(), Client::new());
    let mut s = Script::new(0);
    s.connect(0, USER).send(0, &a.hello());
    s.send(
        0,
        &a.driver(DBUS, "RequestName", &su("org.example.Allowed", 0)),
    );
    let mut body = BodyWriter::new();
    body.str("org.example.Sandbox").str("filtered-app");
    body.array("{sv}", |_| {});
    body.array("{sv}", |m| {
        m.dict_entry(|e| {
            e.str("Allow").variant("a(usos)", |v| {
                v.array("(usos)", |arr| {
                    arr.structure("usos", |st| {
                        st.u32(1)
                            .str("org.example.Allowed")
                            .object_path("/")
                            .str("org.example.I");
                    });
                });
            });
        });
    });
    s.send(0, &a.driver(C1, "AddServer", &body)).drain();
    s.connect(1, USER | 4).send(1, &b.hello());
    s.send(
        1,
        &b.call(
            "org.example.Allowed",
            "/",
            "org.example.I",
            "Ping",
            &BodyWriter::new(),
        ),
    );
    s.send(
        1,
        &b.call(
            "org.example.Other",
            "/",
            "org.example.I",
            "Ping",
            &BodyWriter::new(),
        ),
    );
    s.send(1, &b.driver(DBUS, "ListNames", &BodyWriter::new()));
    s.drain().hangup(1).hangup(0);
    v.push(("containers-filtered", s.0));

    // A monitor, an eavesdropping match, GetAllMatchRules, stats, a reload.
    let (mut a, mut b, mut m) = (Client::new(), Client::new(), Client::new());
    let mut s = Script::new(0);
    s.connect(0, USER).send(0, &a.hello());
    s.connect(1, USER).send(1, &b.hello());
    s.connect(2, ROOT).send(2, &m.hello());
    let mut body = BodyWriter::new();
    body.str_array(["type='method_call'", "eavesdrop=true"])
        .u32(0);
    s.send(
        2,
        &m.driver("org.freedesktop.DBus.Monitoring", "BecomeMonitor", &body),
    );
    s.send(
        1,
        &b.driver(DBUS, "AddMatch", &s1("eavesdrop=true,type='method_return'")),
    );
    s.send(
        0,
        &a.call(":1.1", "/", "org.example.I", "Ping", &BodyWriter::new()),
    )
    .drain();
    s.send(1, &b.reply(":1.0", 1 + 1, &BodyWriter::new()));
    s.send(
        0,
        &a.driver(
            "org.freedesktop.DBus.Debug.Stats",
            "GetAllMatchRules",
            &BodyWriter::new(),
        ),
    );
    s.send(
        0,
        &a.driver(
            "org.freedesktop.DBus.Debug.Stats",
            "GetStats",
            &BodyWriter::new(),
        ),
    );
    s.send(0, &a.driver(DBUS, "GetConnectionUnixUser", &s1(":1.1")));
    s.send(
        0,
        &a.driver(
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
            &BodyWriter::new(),
        ),
    );
    s.reload();
    s.send(0, &a.driver(DBUS, "ReloadConfig", &BodyWriter::new()));
    s.drain().hangup(0).hangup(1).hangup(2);
    v.push(("monitor-eavesdrop-reload", s.0));

    // A slow reader: signals pile up past max_outgoing_bytes and the reader is dropped.
    let (mut a, mut b) = (Client::new(), Client::new());
    let mut s = Script::new(0);
    s.connect(0, USER).send(0, &a.hello());
    s.connect(1, USER).send(1, &b.hello());
    s.send(1, &b.driver(DBUS, "AddMatch", &s1("type='signal'")));
    let big = "x".repeat(600);
    for _ in 0..30 {
        s.send(0, &a.signal("org.example.I", "Flood", &s1(&big)));
    }
    s.read(1, 100).read(1, 0xffff).drain();
    v.push(("slow-reader", s.0));

    // Calls that are never answered: the reply timeout, reply limits, a reply after it.
    let (mut a, mut b) = (Client::new(), Client::new());
    let mut s = Script::new(0);
    s.connect(0, USER).send(0, &a.hello());
    s.connect(1, OTHER).send(1, &b.hello());
    for _ in 0..6 {
        s.send(
            0,
            &a.call(":1.1", "/", "org.example.I", "Slow", &BodyWriter::new()),
        );
    }
    s.advance(40).drain();
    s.send(1, &b.reply(":1.0", 2, &BodyWriter::new()));
    s.advance(255).drain();
    v.push(("reply-timeout", s.0));

    // The system-like policy: a refused uid, allowed and denied names and calls, root.
    let (mut a, mut b, mut r) = (Client::new(), Client::new(), Client::new());
    let mut s = Script::new(1);
    s.connect(3, OTHER);
    s.connect(0, USER).send(0, &a.hello());
    s.send(
        0,
        &a.driver(DBUS, "RequestName", &su("org.example.Service", 0)),
    );
    s.send(0, &a.driver(DBUS, "RequestName", &su("com.other.Name", 0)));
    s.connect(1, USER).send(1, &b.hello());
    s.send(
        1,
        &b.call(
            "org.example.Service",
            "/",
            "org.example.Open",
            "Forbidden",
            &BodyWriter::new(),
        ),
    );
    s.send(
        1,
        &b.call(
            "org.example.Service",
            "/",
            "org.example.Secret",
            "Get",
            &BodyWriter::new(),
        ),
    );
    s.send(
        1,
        &b.call(":1.0", "/", "org.example.Open", "Get", &BodyWriter::new()),
    );
    s.send(
        1,
        &b.driver(DBUS, "UpdateActivationEnvironment", &BodyWriter::new()),
    );
    s.connect(2, ROOT).send(2, &r.hello());
    s.send(2, &r.driver(DBUS, "RequestName", &su("com.other.Name", 0)));
    s.send(
        2,
        &r.call(":1.0", "/", "org.example.Secret", "Get", &BodyWriter::new()),
    );
    s.drain().reload().drain();
    v.push(("system-policy", s.0));

    // Framing: a message split over several writes, partial reads, fds, then garbage.
    let mut a = Client::new();
    let mut s = Script::new(0);
    let hello = a.hello();
    s.connect(0, USER)
        .send(0, &hello[..10])
        .send(0, &hello[10..]);
    s.connect(1, USER).send(1, &Client::new().hello());
    let serial = a.next();
    let mut body = BodyWriter::new();
    body.fd(0).fd(1);
    let with_fds = MessageBuilder::method_call("/", Some("org.example.I"), "TakeFds")
        .destination(":1.1")
        .flags(0)
        .unix_fds(2)
        .build(serial, &body);
    s.send(0, &with_fds);
    s.read(1, 7).read(1, 30).read(1, 0xffff);
    s.send(0, b"l\x01\x00\x01garbage!");
    s.drain();
    v.push(("framing-fds", s.0));

    v
}
