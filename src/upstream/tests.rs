use super::*;
use tokio::io::AsyncReadExt;

/// A record of `len` payload bytes: header (application data, TLS 1.2 on the wire) and
/// payload.
fn record(len: u16) -> Vec<u8> {
    let mut r = vec![23, 3, 3];
    r.extend_from_slice(&len.to_be_bytes());
    r.resize(5 + usize::from(len), 0xaa);
    r
}

/// Whole records that fit are handed on, never the start of the next; when not even one
/// fits (a large record, a partial one), as much as fits.
#[test]
fn hands_on_whole_records_when_one_fits() {
    let held = [record(100), record(200), record(300)].concat();
    assert_eq!(records_within(&held, 4096), held.len());
    assert_eq!(records_within(&held, 400), 105 + 205);
    assert_eq!(records_within(&held, 104), 104);
    assert_eq!(records_within(&held[..50], 4096), 50);
    assert_eq!(records_within(&held[..108], 4096), 105);
    assert_eq!(records_within(&held[..3], 4096), 3);
    assert_eq!(records_within(&[], 4096), 0);
    let big = record(16 * 1024);
    assert_eq!(records_within(&big, 4096), 4096);
}

/// What the socket holds is handed on at once, never waiting for more; when the socket
/// runs dry the read waits like the socket's own and the buffer is gone; the peer's close
/// is the end.
#[tokio::test]
async fn reads_what_the_socket_holds_and_keeps_no_buffer_while_waiting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (mut sock, mut peer) = (TlsSocket::new(tcp.unwrap()), accepted.unwrap().0);
    let first = [record(100), record(50)].concat();
    peer.write_all(&first).await.unwrap();
    let mut buf = [0u8; 4096];
    let mut got = 0;
    while got < first.len() {
        got += sock.read(&mut buf[got..]).await.unwrap();
    }
    assert_eq!(&buf[..got], &first[..]);
    let mut rb = ReadBuf::new(&mut buf);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(Pin::new(&mut sock).poll_read(&mut cx, &mut rb).is_pending());
    assert_eq!(sock.buf.capacity(), 0, "no buffer while waiting");
    // A burst larger than one read: the next reads come from one socket read.
    let burst: Vec<u8> = (0..40).flat_map(|_| record(300)).collect();
    peer.write_all(&burst).await.unwrap();
    let mut got = Vec::new();
    while got.len() < burst.len() {
        let n = sock.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
        if got.len() == buf.len() {
            assert_eq!(
                sock.buf.len(),
                TLS_READ_BUF,
                "a full read starts the buffer"
            );
        }
    }
    assert_eq!(got, burst);
    let mut rb = ReadBuf::new(&mut buf);
    assert!(Pin::new(&mut sock).poll_read(&mut cx, &mut rb).is_pending());
    assert_eq!(sock.buf.capacity(), 0, "the burst's buffer is gone");
    peer.write_all(&record(10)).await.unwrap();
    drop(peer);
    let mut rest = Vec::new();
    sock.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, record(10));
}
