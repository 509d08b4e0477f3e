//! A server-side TLS stream over rustls' unbuffered API, whose buffers an idle connection can
//! give back.
//!
//! `tokio-rustls` drives rustls' buffered connection, which keeps a 4 KiB record buffer for the
//! life of every connection (rustls shrinks it to 4 KiB between reads but never frees it). With
//! 10,000 keep-alive clients that is 40 MiB spent on connections that send nothing. Here the
//! caller owns every buffer: received ciphertext (`incoming`), ciphertext waiting for the
//! socket (`outgoing`) and decrypted bytes the reader had no room for (`plain`).
//! [`TlsStream::release_buffers`] frees whichever of them is empty; the next read or write
//! allocates again. Writes cost one copy more than the buffered API's: rustls (0.23) seals each
//! record in a buffer of its own and then copies it into `outgoing`, where the buffered API
//! queues that buffer as it is.
//!
//! Behaviour matches `tokio-rustls` where callers can tell: the handshake completes when rustls
//! stops handshaking (so a client certificate has been verified), the peer's `close_notify`
//! reads as end of stream, a TCP end without it reads as `UnexpectedEof`, shutdown sends
//! `close_notify` and then the TCP FIN, and a TLS error sends its alert before the error is
//! returned. Handshake messages that arrive later (TLS 1.3 `KeyUpdate`) are answered on the
//! next read or write.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, ReadTraffic,
    WriteTraffic,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes asked from the socket per read (rustls' own read size).
const READ_SIZE: usize = 4096;
/// The most received ciphertext held at once: a handshake message may span several records,
/// and rustls needs all of them in the buffer (its own limit for handshake messages is 64 KiB).
const MAX_INCOMING: usize = 0x1_0000 + 2 * READ_SIZE;
/// Plaintext encrypted per write: one full record. Larger writes are accepted in parts.
const MAX_WRITE: usize = 16 * 1024;
/// Room for a record's header, tag and padding on top of its plaintext.
const RECORD_OVERHEAD: usize = 64;

/// A TLS connection on a TCP stream, after its handshake.
pub struct TlsStream {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received ciphertext; `incoming[start..end]` is not processed yet.
    incoming: Vec<u8>,
    start: usize,
    end: usize,
    /// Ciphertext for the socket; `outgoing[sent..]` is not sent yet.
    outgoing: Vec<u8>,
    sent: usize,
    /// Plaintext decrypted before the reader asked for it; `plain[taken..]` is unread.
    plain: Vec<u8>,
    taken: usize,
    /// The peer sent `close_notify`, or the socket ended: reads return end of stream.
    read_closed: bool,
    /// `close_notify` is queued: writes are refused.
    write_closed: bool,
    /// A TLS error ended the connection: rustls is not asked again (it would process the same
    /// input again and queue a second alert).
    failed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("io", &self.io)
            .field("buffered_input", &(self.end - self.start))
            .field("unsent", &(self.outgoing.len() - self.sent))
            .field("unread", &(self.plain.len() - self.taken))
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// What the caller of [`TlsStream::process`] wants from the connection.
enum Want<'a, 'b> {
    /// Decrypted bytes, into this buffer.
    Read(&'a mut ReadBuf<'b>),
    /// These bytes encrypted (at most [`MAX_WRITE`] of them).
    Write(&'a [u8]),
    /// A `close_notify` alert encrypted.
    CloseNotify,
    /// The handshake to progress; no application data.
    Handshake,
}

/// Where [`TlsStream::process`] stopped.
enum Step {
    /// Decrypted bytes went to the reader (or to `plain`).
    Read,
    /// This many bytes were encrypted into `outgoing` (zero for `close_notify`).
    Wrote(usize),
    /// Every complete record is processed; the connection needs more bytes from the peer.
    NeedInput,
    /// The peer closed its side cleanly.
    PeerClosed,
}

impl TlsStream {
    /// Performs the server side of the handshake on `io`. Completes once rustls stops
    /// handshaking, so a client certificate (when the configuration asks for one) is verified.
    pub async fn accept(config: Arc<ServerConfig>, io: TcpStream) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
        let mut tls = Self {
            io,
            conn,
            incoming: Vec::new(),
            start: 0,
            end: 0,
            outgoing: Vec::new(),
            sent: 0,
            plain: Vec::new(),
            taken: 0,
            read_closed: false,
            write_closed: false,
            failed: false,
        };
        std::future::poll_fn(|cx| tls.poll_handshake(cx)).await?;
        Ok(tls)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Application data sent with the client's last flight waits in `plain`.
            if let Step::PeerClosed = self.process(&mut Want::Handshake)? {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                )));
            }
            if !self.conn.is_handshaking() {
                return self.poll_send(cx);
            }
            // Our flight first: the peer answers it.
            ready!(self.poll_send(cx))?;
            if ready!(self.poll_receive(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                )));
            }
        }
    }

    /// The protocol the client and the server agreed on through ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The TCP stream underneath (to wait for readability without reading).
    pub const fn tcp(&self) -> &TcpStream {
        &self.io
    }

    /// True when bytes from the peer wait here: decrypted and unread, or received and not yet
    /// decrypted. A stream without any can wait on the socket alone.
    pub const fn has_buffered_input(&self) -> bool {
        self.taken < self.plain.len() || self.start < self.end
    }

    /// Frees every buffer that holds nothing. Cheap to call; an idle connection then holds only
    /// the socket and rustls' connection state (keys and sequence numbers).
    pub fn release_buffers(&mut self) {
        if self.start == self.end {
            self.incoming = Vec::new();
            (self.start, self.end) = (0, 0);
        }
        if self.sent == self.outgoing.len() {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
        if self.taken == self.plain.len() {
            self.plain = Vec::new();
            self.taken = 0;
        }
    }

    /// Bytes of buffer capacity held (zero once an idle stream released its buffers).
    pub fn buffer_capacity(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.plain.capacity()
    }

    /// Runs rustls over the received ciphertext until it produces what `want` asks for or needs
    /// more input. Handshake records it emits are queued in `outgoing` (sent by `poll_send`).
    fn process(&mut self, want: &mut Want<'_, '_>) -> io::Result<Step> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS connection failed earlier",
            ));
        }
        loop {
            let status = self
                .conn
                .process_tls_records(&mut self.incoming[self.start..self.end]);
            let mut discard = status.discard;
            let step = match status.state {
                Err(e) => Err(Failure::Tls(e)),
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    match take_records(&mut records, want, &mut self.plain) {
                        Ok((more, any)) => {
                            discard += more;
                            // Bytes decrypted while the caller wanted to write wait for the
                            // reader.
                            Ok((any && matches!(want, Want::Read(_))).then_some(Step::Read))
                        }
                        Err(e) => Err(Failure::Tls(e)),
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_record(&mut self.outgoing, &mut encode);
                    Ok(None)
                }
                // The records are in `outgoing`, which goes out before anything else does.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    encrypt_for(&mut traffic, want, &mut self.outgoing).map_err(Failure::Encrypt)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Step::NeedInput)),
                Ok(ConnectionState::PeerClosed) => {
                    self.read_closed = true;
                    Ok(match want {
                        // Writing stays possible after the peer's `close_notify`.
                        Want::Write(_) | Want::CloseNotify => None,
                        Want::Read(_) | Want::Handshake => Some(Step::PeerClosed),
                    })
                }
                // Both sides sent `close_notify`.
                Ok(ConnectionState::Closed) => {
                    self.read_closed = true;
                    Ok(Some(Step::PeerClosed))
                }
                // The configuration accepts no early data; anything else is a newer rustls
                // state this code does not know.
                Ok(_) => Err(Failure::Unexpected),
            };
            self.start += discard;
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            }
            match step {
                Ok(Some(step)) => return Ok(step),
                Ok(None) => {}
                Err(Failure::Tls(e)) => return Err(self.fail(e)),
                Err(Failure::Encrypt(e)) => return Err(io::Error::other(e)),
                Err(Failure::Unexpected) => {
                    return Err(io::Error::other("unexpected TLS connection state"));
                }
            }
        }
    }

    /// Turns a TLS error into an I/O error, after queueing the alert rustls has for the peer and
    /// trying once to send it without blocking.
    fn fail(&mut self, error: rustls::Error) -> io::Error {
        self.failed = true;
        // rustls queues its alert before it reports the error, and hands queued records out
        // before it looks at the input again: one more call yields the alert. Only one: a
        // second would process the same input again.
        let status = self
            .conn
            .process_tls_records(&mut self.incoming[self.start..self.end]);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            encode_record(&mut self.outgoing, &mut encode);
        }
        while self.sent < self.outgoing.len() {
            match self.io.try_write(&self.outgoing[self.sent..]) {
                Ok(n) if n > 0 => self.sent += n,
                _ => break,
            }
        }
        invalid_data(error)
    }

    /// Sends `outgoing` until it is empty or the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads once from the socket into `incoming`; `Ok(0)` is the end of the TCP stream.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.end + READ_SIZE > self.incoming.len() {
            // Move the unprocessed bytes to the front (rustls' "discard"), then grow if needed.
            if self.start > 0 {
                self.incoming.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let need = self.end + READ_SIZE;
            if need > self.incoming.len() {
                if self.end >= MAX_INCOMING {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS message buffer full",
                    )));
                }
                self.incoming.resize(need, 0);
            }
        }
        let mut buf = ReadBuf::new(&mut self.incoming[self.end..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    /// Copies unread decrypted bytes to `buf`.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.plain.len() - self.taken).min(buf.remaining());
        buf.put_slice(&self.plain[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.plain.len() {
            self.plain.clear();
            self.taken = 0;
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.taken < this.plain.len() {
            this.take_plain(buf);
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            match this.process(&mut Want::Read(buf))? {
                Step::Read | Step::PeerClosed => return Poll::Ready(Ok(())),
                Step::Wrote(_) => unreachable!("reading never encrypts"),
                Step::NeedInput => {}
            }
            // Anything rustls queued (a `KeyUpdate` answer) goes out before we wait for the peer;
            // a full socket does not hold up reading.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if ready!(this.poll_receive(cx))? == 0 {
                this.read_closed = true;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Backpressure: what is queued goes out before more is taken.
        ready!(this.poll_send(cx))?;
        let n = match this.process(&mut Want::Write(data))? {
            Step::Wrote(n) => n,
            Step::Read | Step::NeedInput | Step::PeerClosed => {
                return Poll::Ready(Err(io::Error::other("TLS connection cannot send data")));
            }
        };
        // Send now if the socket takes it; otherwise the bytes wait for the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.process(&mut Want::CloseNotify)?;
            this.write_closed = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Why [`TlsStream::process`] stopped short.
enum Failure {
    Tls(rustls::Error),
    Encrypt(EncryptError),
    Unexpected,
}

/// Hands every decrypted record to the reader's buffer while it has room, the rest to `plain`.
/// Returns the extra bytes to discard and whether any payload came.
fn take_records(
    records: &mut ReadTraffic<'_, '_, ServerConnectionData>,
    want: &mut Want<'_, '_>,
    plain: &mut Vec<u8>,
) -> Result<(usize, bool), rustls::Error> {
    let (mut discard, mut any) = (0, false);
    while let Some(record) = records.next_record() {
        let record = record?;
        discard += record.discard;
        let mut payload = record.payload;
        if let Want::Read(buf) = want {
            let n = payload.len().min(buf.remaining());
            buf.put_slice(&payload[..n]);
            payload = &payload[n..];
        }
        plain.extend_from_slice(payload);
        any |= !record.payload.is_empty();
    }
    Ok((discard, any))
}

/// Encrypts what `want` asks for into `outgoing`, once the connection may send.
fn encrypt_for(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    want: &mut Want<'_, '_>,
    outgoing: &mut Vec<u8>,
) -> Result<Option<Step>, EncryptError> {
    match want {
        Want::Write(data) => {
            let data = &data[..data.len().min(MAX_WRITE)];
            let room = data.len() + RECORD_OVERHEAD;
            try_encrypt(outgoing, room, |out| traffic.encrypt(data, out))?;
            Ok(Some(Step::Wrote(data.len())))
        }
        Want::CloseNotify => {
            try_encrypt(outgoing, RECORD_OVERHEAD, |out| {
                traffic.queue_close_notify(out)
            })?;
            Ok(Some(Step::Wrote(0)))
        }
        Want::Read(_) | Want::Handshake => Ok(Some(Step::NeedInput)),
    }
}

/// Appends the handshake record (or alert) rustls hands out to `out`, growing `out` as needed.
fn encode_record<D>(out: &mut Vec<u8>, encode: &mut EncodeTlsData<'_, D>) {
    let len = out.len();
    let mut room = READ_SIZE;
    loop {
        out.resize(len + room, 0);
        match encode.encode(&mut out[len..]) {
            Ok(n) => {
                out.truncate(len + n);
                return;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            // Never twice for one state: nothing more to encode.
            Err(EncodeError::AlreadyEncoded) => {
                out.truncate(len);
                return;
            }
        }
    }
}

/// Appends what `encrypt` writes to `out`, starting with `room` bytes and growing as needed.
fn try_encrypt(
    out: &mut Vec<u8>,
    mut room: usize,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), EncryptError> {
    let len = out.len();
    loop {
        out.resize(len + room, 0);
        match encrypt(&mut out[len..]) {
            Ok(n) => {
                out.truncate(len + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size;
            }
            Err(e) => {
                out.truncate(len);
                return Err(e);
            }
        }
    }
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    //! Real TLS over real loopback sockets: `tokio-rustls` as the client, this stream as the
    //! server, with the scoring listener's own configuration.
    use super::*;

    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::client::TlsStream as ClientStream;

    struct Pki {
        server: Arc<ServerConfig>,
        trusted: CertificateDer<'static>,
    }

    fn pki(client_ca: Option<Vec<CertificateDer<'static>>>) -> Pki {
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(a.signing_key.serialize_der()).expect("key");
        let certified = rustls::sign::CertifiedKey::from_der(
            vec![a.cert.der().clone()],
            key,
            &super::super::provider(),
        )
        .expect("pair");
        let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(certified));
        let server = super::super::server_config(resolver, client_ca).expect("server config");
        Pki {
            server: Arc::new(server),
            trusted: a.cert.der().clone(),
        }
    }

    fn client_config(
        pki: &Pki,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.trusted.clone()).expect("trust");
        rustls::ClientConfig::builder_with_provider(super::super::provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth()
    }

    /// Both handshakes over one loopback connection, run together; each side's outcome.
    async fn handshake(
        pki: &Pki,
        client: rustls::ClientConfig,
    ) -> (io::Result<ClientStream<TcpStream>>, io::Result<TlsStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let connect = async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            connector.connect(name, tcp).await
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.expect("accept");
            TlsStream::accept(Arc::clone(&pki.server), tcp).await
        };
        tokio::join!(connect, accept)
    }

    /// A connected pair: the client's handshake and the server's accept, both finished.
    async fn pair(pki: &Pki, client: rustls::ClientConfig) -> (ClientStream<TcpStream>, TlsStream) {
        let (client, server) = handshake(pki, client).await;
        (
            client.expect("client handshake"),
            server.expect("server handshake"),
        )
    }

    /// Writes `message` on one side and reads exactly that many bytes on the other.
    async fn deliver(
        from: &mut (impl AsyncWrite + Unpin),
        to: &mut (impl AsyncRead + Unpin),
        message: &[u8],
    ) -> Vec<u8> {
        from.write_all(message).await.expect("sender writes");
        from.flush().await.expect("sender flushes");
        let mut got = vec![0; message.len()];
        to.read_exact(&mut got).await.expect("receiver reads");
        got
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from(i % 251).expect("below 251") ^ seed)
            .collect()
    }

    #[tokio::test]
    async fn large_messages_cross_both_ways_through_small_reads() {
        let pki = pki(None);
        let tls13 = client_config(&pki, &[&rustls::version::TLS13]);
        let (mut client, mut server) = pair(&pki, tls13).await;
        assert_eq!(server.alpn_protocol(), None);
        let sent = pattern(200_000, 7);
        let client_side = async {
            client.write_all(&sent).await.expect("client writes");
            client.flush().await.expect("client flushes");
            let mut back = vec![0; sent.len()];
            client.read_exact(&mut back).await.expect("client reads");
            back
        };
        let server_side = async {
            // Reads smaller than a record: the rest of each record waits in `plain`.
            let mut got = Vec::new();
            let mut chunk = [0u8; 1000];
            while got.len() < sent.len() {
                let n = server.read(&mut chunk).await.expect("server reads");
                assert!(n > 0, "end of stream after {} bytes", got.len());
                got.extend_from_slice(&chunk[..n]);
            }
            server.write_all(&got).await.expect("server writes");
            server.flush().await.expect("server flushes");
            got
        };
        let (back, got) = tokio::join!(client_side, server_side);
        assert!(got == sent, "the server read what the client sent");
        assert!(back == sent, "the client read the server's echo");

        // close_notify both ways: the server reads a clean end, the client too.
        client.shutdown().await.expect("client close_notify");
        let mut rest = Vec::new();
        server
            .read_to_end(&mut rest)
            .await
            .expect("clean end of stream");
        assert!(rest.is_empty());
        server.shutdown().await.expect("server close_notify");
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .await
            .expect("the client reads a clean end too");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffers_and_resumes() {
        let pki = pki(None);
        let tls13 = client_config(&pki, &[&rustls::version::TLS13]);
        let (mut client, mut server) = pair(&pki, tls13).await;
        for round in 0..3u8 {
            let request = pattern(300 + usize::from(round), round);
            let got = deliver(&mut client, &mut server, &request).await;
            assert_eq!(got, request);
            assert!(server.buffer_capacity() > 0, "reading used a buffer");
            let ok = deliver(&mut server, &mut client, b"ok").await;
            assert_eq!(&ok, b"ok");
            assert!(!server.has_buffered_input());
            server.release_buffers();
            assert_eq!(server.buffer_capacity(), 0, "round {round}: buffers freed");
        }
    }

    #[tokio::test]
    async fn key_updates_and_tls12_keep_working() {
        let pki = pki(None);
        let tls13 = client_config(&pki, &[&rustls::version::TLS13]);
        let (mut client, mut server) = pair(&pki, tls13).await;
        for round in 0..3u8 {
            // The client switches keys (and asks the server to switch too) before each message.
            client
                .get_mut()
                .1
                .refresh_traffic_keys()
                .expect("key update");
            let message = pattern(5_000, round);
            // Read after a key update.
            let got = deliver(&mut client, &mut server, &message).await;
            assert_eq!(got, message);
            // Written with the server's new keys.
            let back = deliver(&mut server, &mut client, &got).await;
            assert_eq!(back, message);
        }

        let tls12 = client_config(&pki, &[&rustls::version::TLS12]);
        let (mut client, mut server) = pair(&pki, tls12).await;
        assert_eq!(
            server.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let got = deliver(&mut client, &mut server, b"over TLS 1.2").await;
        assert_eq!(&got, b"over TLS 1.2");
    }

    #[tokio::test]
    async fn simultaneous_reads_and_writes_interleave() {
        let pki = pki(None);
        let mut tls13 = client_config(&pki, &[&rustls::version::TLS13]);
        tls13.alpn_protocols = vec![b"h2".to_vec()];
        let (client, server) = pair(&pki, tls13).await;
        assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
        // Both sides send 1 MiB while receiving 1 MiB: neither may wait for the other to read.
        let up = pattern(1 << 20, 1);
        let down = pattern(1 << 20, 2);
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        let (mut server_rx, mut server_tx) = tokio::io::split(server);
        let (got_up, got_down, (), ()) = tokio::join!(
            async {
                let mut got = Vec::new();
                server_rx.read_to_end(&mut got).await.expect("server reads");
                got
            },
            async {
                let mut got = Vec::new();
                client_rx.read_to_end(&mut got).await.expect("client reads");
                got
            },
            async {
                client_tx.write_all(&up).await.expect("client writes");
                client_tx.shutdown().await.expect("client closes");
            },
            async {
                server_tx.write_all(&down).await.expect("server writes");
                server_tx.shutdown().await.expect("server closes");
            },
        );
        assert!(
            got_up == up,
            "upload intact ({} of {} bytes)",
            got_up.len(),
            up.len()
        );
        assert!(
            got_down == down,
            "download intact ({} bytes)",
            got_down.len()
        );
    }

    #[tokio::test]
    async fn a_tcp_end_without_close_notify_is_an_unexpected_eof() {
        let pki = pki(None);
        let tls13 = client_config(&pki, &[&rustls::version::TLS13]);
        let (mut client, mut server) = pair(&pki, tls13).await;
        client.write_all(b"partial").await.expect("client writes");
        client.flush().await.expect("client flushes");
        client
            .get_mut()
            .0
            .shutdown()
            .await
            .expect("TCP FIN, no close_notify");
        let mut got = [0u8; 7];
        server
            .read_exact(&mut got)
            .await
            .expect("the data before the end");
        let err = server
            .read(&mut got)
            .await
            .expect_err("truncation is reported");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[tokio::test]
    async fn a_forged_record_is_an_error_and_the_client_gets_the_alert() {
        let pki = pki(None);
        let tls13 = client_config(&pki, &[&rustls::version::TLS13]);
        let (mut client, mut server) = pair(&pki, tls13).await;
        // An application-data record whose tag cannot verify, written under the client's TLS.
        let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        forged.extend(pattern(0x40, 9));
        client
            .get_mut()
            .0
            .write_all(&forged)
            .await
            .expect("raw write");
        let mut byte = [0u8; 1];
        let err = server
            .read(&mut byte)
            .await
            .expect_err("the record is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let err = client
            .read(&mut byte)
            .await
            .expect_err("the server's alert");
        assert!(err.to_string().contains("BadRecordMac"), "{err}");
        // The connection stays failed: no later read or write succeeds.
        let err = server.read(&mut byte).await.expect_err("still failed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        server.write_all(b"x").await.expect_err("no write either");
    }

    #[tokio::test]
    async fn a_failed_handshake_tells_the_client_why() {
        // The server wants a client certificate; the client has none.
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).expect("ca");
        let pki = pki(Some(vec![ca.cert.der().clone()]));
        let tls13 = client_config(&pki, &[&rustls::version::TLS13]);
        let (client, server) = handshake(&pki, tls13).await;
        // TLS 1.3: the client finishes its side first and learns of the refusal on read.
        let mut client = client.expect("client side completes");
        let server_err = server.expect_err("no client certificate");
        let mut byte = [0u8; 1];
        let client_err = client
            .read(&mut byte)
            .await
            .expect_err("the server refused");
        assert_eq!(
            server_err.kind(),
            io::ErrorKind::InvalidData,
            "{server_err}"
        );
        assert!(
            client_err.to_string().contains("CertificateRequired"),
            "the client got the server's alert: {client_err}"
        );
    }
}
