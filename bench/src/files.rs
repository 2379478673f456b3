//! `chat-bench files`: attachments (PROTOCOL.md B9) on loopback. One large
//! upload and its download (MiB/s), then many uploads at once with the
//! server's RSS sampled throughout: its growth is what streaming keeps
//! bounded (an upload never sits whole in the server's memory).

use std::time::{Duration, Instant};

use actix_http::body::SizedStream;
use futures_util::StreamExt;
use serde::Serialize;

use super::{register, rss_kib, setup, BenchError};

const MIB: u64 = 1024 * 1024;
/// The generator's chunks: what it hands the connection at a time.
const CHUNK: usize = 64 * 1024;

pub struct FilesOptions {
    pub url: String,
    /// The size of the single upload and download, in MiB.
    pub size_mib: u64,
    /// Uploads run at once in the second phase, one user each.
    pub concurrent: u64,
    /// The size of each of them, in MiB.
    pub each_mib: u64,
    /// The server's process id, to sample its RSS.
    pub pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct FilesReport {
    pub size_mib: u64,
    pub upload_mib_per_s: f64,
    pub download_mib_per_s: f64,
    pub concurrent: u64,
    pub each_mib: u64,
    pub concurrent_seconds: f64,
    pub concurrent_mib_per_s: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    pub rss_growth_kib: Option<u64>,
}

/// A body of `bytes` bytes, made as it is sent (the generator holds one chunk).
fn body(
    bytes: u64,
) -> SizedStream<impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>>> {
    let chunk = bytes::Bytes::from(vec![0x5a_u8; CHUNK]);
    let chunks = bytes.div_ceil(CHUNK as u64);
    let stream = futures_util::stream::iter((0..chunks).map(move |i| {
        let left = bytes - i * CHUNK as u64;
        Ok(chunk.slice(..(left.min(CHUNK as u64) as usize)))
    }));
    SizedStream::new(bytes, stream)
}

async fn upload(
    client: &awc::Client,
    base: &str,
    token: &str,
    bytes: u64,
) -> Result<String, BenchError> {
    let mut res = client
        .post(format!("{base}/api/attachments/?name=bench.bin"))
        .bearer_auth(token)
        .insert_header(("Content-Type", "application/octet-stream"))
        .send_body(body(bytes))
        .await
        .map_err(|e| setup("upload", e))?;
    let answer: serde_json::Value = res.json().await.map_err(|e| setup("upload answer", e))?;
    answer["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| setup("upload refused (raise MAX_ATTACHMENT_BYTES?)", answer))
}

/// Runs `bench files`.
pub async fn files(opts: FilesOptions) -> Result<FilesReport, BenchError> {
    let client = crate::net::client(None, Duration::from_secs(600));
    let base = opts.url.trim_end_matches('/').to_string();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let owner = register(&client, &base, &format!("f{}", &run[..12])).await?;

    let size = opts.size_mib * MIB;
    let started = Instant::now();
    let id = upload(&client, &base, &owner.token, size).await?;
    let upload_mib_per_s = opts.size_mib as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut res = client
        .get(format!("{base}/api/attachments/{id}/"))
        .bearer_auth(&owner.token)
        .send()
        .await
        .map_err(|e| setup("download", e))?;
    let mut received = 0u64;
    while let Some(chunk) = res.next().await {
        received += chunk.map_err(|e| setup("download body", e))?.len() as u64;
    }
    if received != size {
        return Err(setup("download", format!("{received} bytes of {size}")));
    }
    let download_mib_per_s = opts.size_mib as f64 / started.elapsed().as_secs_f64();

    // Many at once, one user each (each within the default quota).
    let mut users = Vec::new();
    for i in 0..opts.concurrent {
        users.push(register(&client, &base, &format!("f{}{i}", &run[..8])).await?);
    }
    let rss_before_kib = opts.pid.and_then(rss_kib);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let pid = opts.pid;
    let sampler = actix_rt::spawn(async move {
        let mut peak = 0;
        loop {
            if let Some(rss) = pid.and_then(rss_kib) {
                peak = peak.max(rss);
            }
            tokio::select! {
                _ = &mut stopped => return peak,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    });
    let each = opts.each_mib * MIB;
    let started = Instant::now();
    let uploads = users
        .iter()
        .map(|user| upload(&client, &base, &user.token, each));
    for result in futures_util::future::join_all(uploads).await {
        result?;
    }
    let concurrent_seconds = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    let peak = sampler.await.unwrap_or(0);
    let rss_peak_kib = opts.pid.map(|_| peak);
    Ok(FilesReport {
        size_mib: opts.size_mib,
        upload_mib_per_s,
        download_mib_per_s,
        concurrent: opts.concurrent,
        each_mib: opts.each_mib,
        concurrent_seconds,
        concurrent_mib_per_s: (opts.concurrent * opts.each_mib) as f64 / concurrent_seconds,
        rss_before_kib,
        rss_peak_kib,
        rss_growth_kib: rss_before_kib
            .zip(rss_peak_kib)
            .map(|(b, p)| p.saturating_sub(b)),
    })
}
