//! `hubtrust bench --only hpc`: the HPC stack's time to its first ready lab
//! against the flat topology's, and tunnel throughput against a direct veth
//! link, in one run so the comparisons share the machine's mood.

use std::time::Instant;

use hubtrust_harness::spec::StackSpec;

use crate::bring_up::bring_up;
use crate::measure::{locate_fixture, median, tempdir};

pub async fn first_ready_lab(rounds: u32, throughput_bytes: u64) -> anyhow::Result<()> {
    let hpc_spec = StackSpec::load(&locate_fixture("fixtures/stacks/hpc.toml")?)?;
    let mut flat_lab = Vec::new();
    let mut hpc_lab = Vec::new();
    let mut flat_up = Vec::new();
    let mut hpc_up = Vec::new();
    let mut tunnel = Vec::new();
    let mut direct = Vec::new();
    let mut bare = Vec::new();
    for round in 1..=rounds {
        // Alternate which goes first, so neither always meets a warm cache.
        let order: [bool; 2] = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        for is_hpc in order {
            let spec = if is_hpc {
                hpc_spec.clone()
            } else {
                StackSpec::default()
            };
            let work = tempdir(if is_hpc { "bench-hpc" } else { "bench-flat" })?;
            let started = Instant::now();
            let stack = bring_up(spec, &work).await?;
            let up = started.elapsed().as_secs_f64();
            let lab = stack
                .lab_ready_after("alice")
                .ok_or_else(|| anyhow::anyhow!("no lab of alice"))?
                .as_secs_f64();
            if is_hpc {
                hpc_up.push(up);
                hpc_lab.push(lab);
                // The stack's start-up capture would record every byte of
                // the transfer: evidence-gathering, not the tunnel.
                stack.discard_start_up_capture();
                // Tunnel, bare, bare, tunnel: the order cancels the
                // machine's drift within the round, and each side keeps
                // its better transfer.
                let (first, over_veth) = stack.hpc()?.tunnel_throughput(throughput_bytes).await?;
                let bare_first = stack.hpc()?.bare_ssh_throughput(throughput_bytes).await?;
                let bare_second = stack.hpc()?.bare_ssh_throughput(throughput_bytes).await?;
                let (second, _) = stack.hpc()?.tunnel_throughput(throughput_bytes).await?;
                tunnel.push(first.max(second));
                bare.push(bare_first.max(bare_second));
                direct.push(over_veth);
            } else {
                flat_up.push(up);
                flat_lab.push(lab);
            }
            stack.shutdown().await;
            let _ = std::fs::remove_dir_all(&work);
        }
    }
    let (flat_lab, hpc_lab) = (median(flat_lab), median(hpc_lab));
    println!("first ready lab, flat topology          {flat_lab:.2} s (spawn request → lab answers through the proxy; median of {rounds})");
    println!("first ready lab, HPC (tunnels)          {hpc_lab:.2} s");
    println!(
        "  the tunnel path adds                  {:+.2} s (target < 1 s)",
        hpc_lab - flat_lab
    );
    println!(
        "whole stack up, flat / HPC              {:.2} s / {:.2} s (HPC adds sshd on 3 nodes, internal CAs before the hub, the broker)",
        median(flat_up),
        median(hpc_up)
    );
    // Each round's tunnel against the same round's direct link: the
    // machine's mood changes between rounds, not within one.
    let paired: Vec<f64> = tunnel.iter().zip(&direct).map(|(t, d)| t / d).collect();
    let paired_text: Vec<String> = paired.iter().map(|r| format!("{r:.2}")).collect();
    let over_bare: Vec<f64> = tunnel.iter().zip(&bare).map(|(t, b)| t / b).collect();
    let over_bare_text: Vec<String> = over_bare.iter().map(|r| format!("{r:.2}")).collect();
    let (tunnel, direct, bare) = (median(tunnel), median(direct), median(bare));
    println!(
        "throughput, {} MiB: broker tunnel        {:.0} MB/s (hub → SSH → login-1 → compute-1)",
        throughput_bytes >> 20,
        tunnel / 1e6
    );
    println!(
        "throughput, bare ssh -L, same path      {:.0} MB/s (hub → SSH → login-1 → compute-1, the broker's key and cipher)",
        bare / 1e6
    );
    println!(
        "  tunnel / bare ssh, per round          {} → median {:.2} (target ≥ 0.90)",
        over_bare_text.join(", "),
        median(over_bare)
    );
    println!(
        "throughput, direct veth login-1 → compute-1 {:.0} MB/s",
        direct / 1e6
    );
    println!(
        "  tunnel / direct, per round            {} → median {:.2} (information: OpenSSH's own cost)",
        paired_text.join(", "),
        median(paired)
    );
    Ok(())
}
