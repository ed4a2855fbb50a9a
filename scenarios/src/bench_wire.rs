//! The wire benchmarks: what capturing every link costs a scenario, and
//! how fast the census classifies a large capture on one core.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hubtrust_harness::backend::local::{create_host, create_link, next_link_index};
use hubtrust_harness::capture::{LinkCapture, WireCensus};
use hubtrust_harness::spec::StackSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bring_up::bring_up;
use crate::measure::{median, tempdir};

/// (d) The wire scenario's user journey (log in, run a cell in a real
/// kernel through the proxy) with every link captured and the census
/// checked, against the same journey uncaptured, alternating on one stack.
pub async fn capture_overhead(rounds: u32) -> anyhow::Result<()> {
    let work = tempdir("bench-d")?;
    let stack = bring_up(StackSpec::default(), &work).await?;
    let user = stack
        .users()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the stack has no user"))?;
    let mut plain = Vec::new();
    let mut captured = Vec::new();
    // One warm-up journey, so the first kernel's imports do not land on
    // whichever side happens to go first.
    journey(&stack, &user).await?;
    for round in 0..rounds {
        // Alternate which side goes first, so drift favours neither.
        for capture in [round % 2 == 0, round % 2 != 0] {
            let started = Instant::now();
            if capture {
                let pcaps = work.join(format!("pcap-{round}"));
                let wire = stack.start_wire_capture(&pcaps).await?;
                let cookie = journey(&stack, &user).await?;
                let census = wire.finish().await;
                let inconclusive = census.inconclusive();
                anyhow::ensure!(
                    inconclusive.is_empty(),
                    "the capture was inconclusive: {inconclusive:?}"
                );
                let hits = census.canary_hits(&[
                    ("token", stack.service_token.expose().as_bytes()),
                    ("cookie", cookie.as_bytes()),
                ])?;
                anyhow::ensure!(hits.is_empty(), "canaries on the wire: {hits:?}");
                // Computed for its cost only: the previous journey's
                // connections may close inside this capture window, showing
                // as mid-stream flows that the wire scenarios (which capture
                // from the first packet) never see.
                let _ = census.unprotected(&stack.plaintext_exceptions());
                captured.push(started.elapsed().as_secs_f64());
            } else {
                journey(&stack, &user).await?;
                plain.push(started.elapsed().as_secs_f64());
            }
        }
    }
    stack.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);
    let (off, on) = (median(plain), median(captured));
    println!("wire scenario, capture off (d1)     {off:.2}s  (median of {rounds} rounds)");
    println!("wire scenario, capture + census (d2) {on:.2}s");
    println!(
        "ratio (d2)/(d1)                     {:.3}  (target ≤ 1.10)",
        on / off
    );
    Ok(())
}

/// Logs the user in and runs one cell; returns the login cookie's value.
async fn journey(stack: &hubtrust_harness::stack::Stack, user: &str) -> anyhow::Result<String> {
    let cookie = stack.log_in(user).await?;
    let run = stack.run_cell(user, "print(6 * 7)").await?;
    anyhow::ensure!(
        run.status == "ok" && run.stdout.contains("42"),
        "the cell failed: {} {}",
        run.status,
        run.stdout
    );
    Ok(cookie.expose().to_string())
}

/// The bulk transfer's pace: what one capture thread keeps up with here.
const BULK_RATE: &str = "2gbit";

/// (e) A bulk transfer between two of hubtrust's own hosts is captured,
/// then the census (read, reassemble, classify, search three canaries) is
/// timed on the resulting pcap.
pub async fn census_throughput(bytes: u64) -> anyhow::Result<()> {
    let sender = create_host("bulk-sender", None).await?;
    let receiver = create_host("bulk-receiver", None).await?;
    let link = create_link(next_link_index()?, &sender, &receiver).await?;
    // Pace the sender: on two cores a sender and a receiver at full speed
    // starve the capture thread, whose socket buffer (capped by
    // net.core.rmem_max) then overflows and the evidence is inconclusive.
    // The census, not the capture, is what this measures.
    let pacing = sender
        .wrapper()
        .into_iter()
        .chain(["tc", "qdisc", "add", "dev", link.interfaces.0.as_str()].map(String::from))
        .chain(
            [
                "root", "tbf", "rate", BULK_RATE, "burst", "1mb", "latency", "100ms",
            ]
            .map(String::from),
        )
        .collect::<Vec<_>>();
    let status = tokio::process::Command::new(&pacing[0])
        .args(&pacing[1..])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "`{}` failed", pacing.join(" "));
    let dir = tempdir("bench-e")?;
    let capture = LinkCapture::start(&sender, &link, &link.interfaces.0, &dir).await?;
    let server = SocketAddr::from((link.b.1, 9999));
    let listener = receiver.listen(server).await?;
    let sink = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf).await? {
                0 => break,
                n => total += n as u64,
            }
        }
        Ok::<u64, std::io::Error>(total)
    });
    // Varied bytes, so the canary search does real work, and one canary
    // planted across a chunk boundary that the census must find.
    let mut chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let canary = b"HUBTRUST-BULK-CANARY";
    let mut stream = sender.connect(server, Duration::from_secs(5)).await?;
    let chunks = bytes.div_ceil(chunk.len() as u64).max(2);
    let started = Instant::now();
    for i in 0..chunks {
        if i == chunks / 2 {
            let at = chunk.len() - canary.len() / 2;
            chunk[at..].copy_from_slice(&canary[..canary.len() - canary.len() / 2]);
            stream.write_all(&chunk).await?;
            stream
                .write_all(&canary[canary.len() - canary.len() / 2..])
                .await?;
            continue;
        }
        stream.write_all(&chunk).await?;
    }
    stream.shutdown().await?;
    let received = sink.await??;
    let transfer_secs = started.elapsed().as_secs_f64();
    let evidence = capture.finish().await;
    let pcap_bytes = std::fs::metadata(&evidence.pcap)?.len();
    let hosts = BTreeMap::from([(link.a.1, link.a.0.clone()), (link.b.1, link.b.0.clone())]);

    let started = Instant::now();
    let census = WireCensus::build(vec![evidence], &hosts);
    let hits = census.canary_hits(&[
        ("bulk", canary.as_slice()),
        ("absent-1", b"HUBTRUST-NOT-THERE-1"),
        ("absent-2", b"HUBTRUST-NOT-THERE-2"),
    ])?;
    let census_secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);

    let inconclusive = census.inconclusive();
    anyhow::ensure!(
        inconclusive.is_empty(),
        "the bulk capture was inconclusive, so its figure would mean nothing: {inconclusive:?}"
    );
    anyhow::ensure!(
        hits.len() == 1,
        "the census should find exactly the planted canary, found {hits:?}"
    );
    let mb = pcap_bytes as f64 / 1e6;
    println!(
        "bulk transfer captured (e0)         {:.0} MB sent, {mb:.0} MB of pcap, {:.0} MB/s on the wire",
        received as f64 / 1e6,
        received as f64 / 1e6 / transfer_secs
    );
    println!(
        "census throughput, one core (e)     {:.0} MB/s  ({mb:.0} MB in {census_secs:.2}s; target ≥ 500 MB/s)",
        mb / census_secs
    );
    Ok(())
}
