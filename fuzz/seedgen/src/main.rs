//! Writes the seed corpora for the fuzz targets: `cargo run -p sluicebus-seedgen -- DIR`
//! (run from fuzz/) creates DIR/{message,body,auth,match_rule}/.

use std::fs;
use std::path::Path;
use std::rc::Rc;

use sluicebus::wire::marshal::{BodyWriter, MessageBuilder};
use sluicebus::wire::message::Message;

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
    for t in ["message", "body", "auth", "match_rule"] {
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
}
