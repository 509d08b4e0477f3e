//! The scoring pipeline with no socket at all, for tests under tokio's paused clock: the real
//! gateway (`reload::Applier`, `server::serve`, `proxy`) accepts in-memory connections
//! (`tokio::io::duplex`), and every service's upstream is a [`StandIn`] container reached
//! through a `upstream::Dialer`, also in memory. With nothing waiting on the kernel,
//! the paused clock advances only when every task is idle, straight to the next timer: a
//! 60-second scoring timeout takes no wall time and fires exactly when it should.
//!
//! What the stand-in does with a request is the test's [`Answer`]. Records still go through the
//! real record sink (its writer is an OS thread, so tests here assert on responses and metrics,
//! which are settled before a response is sent).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use scoregate::gateway::{Gateway, Parts};
use scoregate::reload::{Applier, Handles};
use scoregate::server::Drained;
use scoregate::telemetry::activity::ActivityLog;
use scoregate::telemetry::metrics::Metrics;
use scoregate::telemetry::sink::{
    QueueLimits, RecordOutput, RecordSink, RecordWriter, SinkCounters,
};
use scoregate::upstream::{DialedIo, Dialer};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::GatewayBuilder;
use super::gateway::SharedBuf;

/// Bytes each direction of an in-memory connection buffers.
const PIPE: usize = 64 * 1024;

/// A request body the test feeds frame by frame.
pub type FedBody =
    StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// What the stand-in container does with each request.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// Reads the whole body, then answers 200 `{"ok":true}`.
    Ok,
    /// Reads the whole body, waits this long, then answers 200.
    After(Duration),
    /// Never answers (and never reads the body).
    Never,
}

/// The stand-in scoring container: every connection the gateway dials is served in memory.
#[derive(Debug, Clone)]
pub struct StandIn {
    answer: Answer,
}

impl StandIn {
    fn dialer(self) -> Dialer {
        Dialer::new(move |_service: &str| {
            let answer = self.answer;
            async move {
                let (gateway_end, container_end) = tokio::io::duplex(PIPE);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| respond(answer, req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(container_end), service)
                        .await;
                });
                Ok::<DialedIo, std::io::Error>(Box::new(gateway_end))
            }
        })
    }
}

async fn respond(
    answer: Answer,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let wait = match answer {
        Answer::Never => return std::future::pending().await,
        Answer::Ok => None,
        Answer::After(wait) => Some(wait),
    };
    req.into_body().collect().await?;
    if let Some(wait) = wait {
        tokio::time::sleep(wait).await;
    }
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"ok":true}"#)))
        .expect("stand-in response"))
}

/// A gateway serving in-memory connections, in front of a [`StandIn`].
pub struct Pipeline {
    pub gw: Arc<Gateway>,
    accept: mpsc::Sender<(DuplexStream, SocketAddr)>,
    serving: Option<JoinHandle<Drained>>,
    stop: Option<oneshot::Sender<()>>,
    writer: Option<RecordWriter>,
    next_port: u16,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    /// Builds the configuration `builder` describes (plain HTTP) and serves it, every
    /// upstream answering as `answer` says.
    pub fn start(builder: GatewayBuilder, answer: Answer) -> Self {
        let dir = tempfile::tempdir().expect("pipeline temp dir");
        let (_pki, path) = builder.plain_http().write(dir.path());
        let config = scoregate::config::load_and_validate(&path)
            .unwrap_or_else(|e| panic!("test configuration is invalid: {e}"));
        let metrics = Arc::new(Metrics::new());
        let (records, writer) = RecordSink::spawn(
            RecordOutput::Writer(Box::new(SharedBuf::default())),
            QueueLimits::lines(1024),
            true,
            SinkCounters::of(&metrics),
        )
        .expect("record writer");
        let activity = Arc::new(ActivityLog::new(records.clone()));
        let health_wake = Arc::new(tokio::sync::Notify::new());
        let handles = Handles {
            metrics: Arc::clone(&metrics),
            activity: Arc::clone(&activity),
            health_wake: Arc::clone(&health_wake),
            cluster: None,
            dialer: Some(StandIn { answer }.dialer()),
        };
        let (applier, state) = Applier::start(config, handles).expect("first state");
        let gw = Arc::new(Gateway::new(Parts {
            state,
            applier,
            metrics,
            records,
            export: scoregate::telemetry::export::Exporters::default(),
            activity,
            health_wake,
        }));
        let (accept, connections) = mpsc::channel(16);
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(scoregate::server::serve(
            Arc::clone(&gw),
            connections,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            gw,
            accept,
            serving: Some(serving),
            stop: Some(stop),
            writer: Some(writer),
            next_port: 40_000,
            _dir: dir,
        }
    }

    /// A new client connection: the gateway accepts it as coming from 127.0.0.1.
    pub async fn connect<B>(&mut self) -> SendRequest<B>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (client_end, gateway_end) = tokio::io::duplex(PIPE);
        self.next_port += 1;
        let peer = SocketAddr::from(([127, 0, 0, 1], self.next_port));
        self.accept
            .send((gateway_end, peer))
            .await
            .expect("the gateway accepts connections");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_end))
            .await
            .expect("client handshake");
        tokio::spawn(conn);
        sender
    }

    /// `POST path` with `{}` on a new connection, in a task of its own: a request that holds a
    /// slot, waits in the queue or is in flight while the test goes on.
    pub async fn spawn_post(
        &mut self,
        path: &str,
    ) -> JoinHandle<Result<Response<Incoming>, hyper::Error>> {
        let mut client = self.connect().await;
        tokio::spawn(client.send_request(post(path, b"{}")))
    }

    /// Starts the drain (as SIGTERM does); [`Pipeline::drained`] waits for its end.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// How the drain ended.
    pub async fn drained(&mut self) -> Drained {
        let serving = self.serving.take().expect("serving");
        serving.await.expect("serve task")
    }

    /// The current value of a metric series, e.g. `scoregate_requests_total{...}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = String::from_utf8(self.gw.metrics.render()).expect("metrics text is UTF-8");
        super::gateway::metric_value(&text, series)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
        if let Some(writer) = self.writer.take() {
            writer.join();
        }
    }
}

/// `POST path` with `body`.
pub fn post(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "gateway.test")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body)))
        .expect("request")
}

/// `POST path` declaring `length` bytes, whose body the returned sender feeds.
pub fn post_fed(
    path: &str,
    length: usize,
) -> (
    Request<FedBody>,
    mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
) {
    let (tx, rx) = mpsc::channel(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = Request::post(path)
        .header("host", "gateway.test")
        .header("content-type", "application/json")
        .header("content-length", length)
        .body(body)
        .expect("request");
    (req, tx)
}

/// A response's status and the `error.code` of its JSON body (empty when there is none).
pub async fn status_and_code(resp: Response<Incoming>) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code)
}
