//! A small built-in scoring container for `demo`, tests and load tests: it speaks the Azure ML
//! scoring contract (`GET /` → `Healthy`, `POST /score`, `GET /swagger.json`) and does a real,
//! deterministic computation: a multinomial logistic regression over the four iris measurements.
//!
//! It is deliberately minimal (plain HTTP/1.1, no auth, no TLS), like the containers scoregate
//! protects.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

const LABELS: [&str; 3] = ["setosa", "versicolor", "virginica"];
/// Per-class weights over (sepal length, sepal width, petal length, petal width) and intercepts,
/// fitted once on the iris data set.
const WEIGHTS: [[f64; 4]; 3] = [
    [-0.423, 0.967, -2.517, -1.079],
    [0.535, -0.321, -0.206, -0.944],
    [-0.112, -0.646, 2.723, 2.023],
];
const INTERCEPTS: [f64; 3] = [9.849, 2.238, -12.087];
/// The container refuses bodies above this (the gateway enforces its own limit first).
const MAX_BODY: usize = 200 * 1024 * 1024;

/// Class probabilities for one row.
pub fn predict(row: &[f64; 4]) -> [f64; 3] {
    let logits: [f64; 3] = std::array::from_fn(|c| {
        INTERCEPTS[c] + WEIGHTS[c].iter().zip(row).map(|(w, x)| w * x).sum::<f64>()
    });
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp = logits.map(|l| (l - max).exp());
    let sum: f64 = exp.iter().sum();
    exp.map(|e| e / sum)
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, stop: CancellationToken) {
    while let Some(accepted) = until_stopped(&stop, listener.accept()).await {
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        spawn_connection(stream, &stop);
    }
}

/// Serves on a Unix socket (as a container run with gunicorn `--bind unix:` or uvicorn `--uds`)
/// until `stop` is cancelled.
pub async fn serve_unix(listener: UnixListener, stop: CancellationToken) {
    while let Some(accepted) = until_stopped(&stop, listener.accept()).await {
        let Ok((stream, _)) = accepted else { continue };
        spawn_connection(stream, &stop);
    }
}

/// What `accept` gives, or `None` once `stop` is cancelled.
async fn until_stopped<T>(stop: &CancellationToken, accept: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        () = stop.cancelled() => None,
        a = accept => Some(a),
    }
}

fn spawn_connection<T>(io: T, stop: &CancellationToken)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service_fn(handle));
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = conn => {},
            () = stop.cancelled() => {},
        }
    });
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => text(StatusCode::OK, "Healthy"),
        (&Method::GET, "/swagger.json") => json(StatusCode::OK, SWAGGER.as_bytes().to_vec()),
        (&Method::POST, "/score") => score(req).await,
        (_, "/score") => message(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for the requested URL.",
        ),
        _ => message(
            StatusCode::NOT_FOUND,
            "The requested URL was not found on the server.",
        ),
    };
    Ok(resp)
}

async fn score(req: Request<Incoming>) -> Response<Full<Bytes>> {
    #[derive(serde::Deserialize)]
    struct Input {
        #[serde(alias = "inputs")]
        data: Vec<[f64; 4]>,
    }
    #[derive(serde::Serialize)]
    struct Output {
        result: Vec<&'static str>,
        probabilities: Vec<[f64; 3]>,
        count: usize,
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return message(
                StatusCode::BAD_REQUEST,
                "The request body could not be read.",
            );
        }
    };
    let input: Input = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Expected {{\"data\": [[sepal_length, sepal_width, petal_length, petal_width], ...]}}: {e}"
                ),
            );
        }
    };
    let probabilities: Vec<[f64; 3]> = input.data.iter().map(predict).collect();
    let result = probabilities
        .iter()
        .map(|p| {
            let best = (0..3).fold(0, |b, c| if p[c] > p[b] { c } else { b });
            LABELS[best]
        })
        .collect();
    let out = Output {
        count: probabilities.len(),
        result,
        probabilities,
    };
    json(StatusCode::OK, serde_json::to_vec(&out).unwrap_or_default())
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn message(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({ "message": msg })
            .to_string()
            .into_bytes(),
    )
}

const SWAGGER: &str = r##"{
  "swagger": "2.0",
  "info": {"title": "iris", "description": "scoregate's built-in sample model: iris species from four measurements (cm)", "version": "1.0"},
  "schemes": ["https"],
  "consumes": ["application/json"],
  "produces": ["application/json"],
  "securityDefinitions": {"Bearer": {"type": "apiKey", "name": "Authorization", "in": "header", "description": "For example: \"Bearer abc123\""}},
  "paths": {
    "/": {"get": {"operationId": "ServiceHealthCheck", "description": "Simple health check endpoint to ensure the service is up at any given point.", "responses": {"200": {"description": "If service is up and running, this response will be returned with the content 'Healthy'", "schema": {"type": "string"}}}}},
    "/score": {"post": {"operationId": "RunMLService", "description": "Run web service's model and get the prediction output", "security": [{"Bearer": []}],
      "parameters": [{"name": "serviceInputPayload", "in": "body", "description": "The input payload for executing the real-time machine learning service.", "schema": {"$ref": "#/definitions/ServiceInput"}}],
      "responses": {"200": {"description": "The service processed the input correctly and provided a result prediction, if applicable.", "schema": {"$ref": "#/definitions/ServiceOutput"}}}}}
  },
  "definitions": {
    "ServiceInput": {"type": "object", "properties": {"data": {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}}}, "example": {"data": [[5.1, 3.5, 1.4, 0.2]]}},
    "ServiceOutput": {"type": "object", "properties": {"result": {"type": "array", "items": {"type": "string"}}, "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}, "count": {"type": "integer"}}}
  }
}"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicts_the_three_species() {
        let best = |row: [f64; 4]| {
            let p = predict(&row);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            LABELS[(0..3).fold(0, |b, c| if p[c] > p[b] { c } else { b })]
        };
        assert_eq!(best([5.1, 3.5, 1.4, 0.2]), "setosa");
        assert_eq!(best([6.0, 2.7, 4.1, 1.3]), "versicolor");
        assert_eq!(best([6.9, 3.1, 5.8, 2.3]), "virginica");
    }

    #[test]
    fn swagger_is_valid_json() {
        let v: serde_json::Value = serde_json::from_str(SWAGGER).expect("json");
        assert_eq!(v["swagger"], "2.0");
    }
}
