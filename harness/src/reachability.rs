//! Who can reach what: every internal endpoint × every host of the
//! topology, the operator included. The expected verdicts come from the
//! topology's design, as the trust matrix's come from the trust graph:
//! an internal endpoint answers only on the hosts whose processes are its
//! clients. Each cell is a TCP connect from that host to every address the
//! endpoint's host has (its loopback too, from itself), so an endpoint
//! listening on every interface shows wherever it answers.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::Host;

/// What a connection attempt between hosts proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Connected,
    /// Something answered with a reset: there is a route.
    Refused,
    /// No route, or nothing answered at all.
    NoRoute(String),
}

impl Reach {
    /// What a TCP connect's result proves.
    pub fn of<T>(connected: &std::io::Result<T>) -> Self {
        match connected {
            Ok(_) => Reach::Connected,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
            Err(e) => Reach::NoRoute(e.to_string()),
        }
    }
}

pub async fn probe_reach(source: &Host, target: SocketAddr) -> Reach {
    Reach::of(&source.connect(target, Duration::from_secs(2)).await)
}

/// An internal endpoint and where the design lets it answer.
#[derive(Debug, Clone)]
pub struct InternalEndpoint {
    pub name: String,
    /// The host it runs on.
    pub host: String,
    pub port: u16,
    /// The hosts it must answer from; it must answer from none other.
    pub answers_from: BTreeSet<String>,
    /// Why it answers there, for the report.
    pub why: String,
}

/// One cell: the endpoint probed from one host at one address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReachCell {
    pub endpoint: String,
    pub endpoint_host: String,
    pub from: String,
    pub addr: String,
    pub expected: bool,
    pub answered: bool,
    /// What the probe saw: connected, refused, or why nothing answered.
    pub seen: String,
}

impl ReachCell {
    pub fn new(
        endpoint: &InternalEndpoint,
        from: &str,
        addr: Ipv4Addr,
        reach: &Reach,
        expected: bool,
    ) -> Self {
        Self::at(
            &endpoint.name,
            &endpoint.host,
            from,
            SocketAddr::from((addr, endpoint.port)),
            reach,
            expected,
        )
    }

    /// The cell of `endpoint`, on `endpoint_host` at `addr`, tried from
    /// `from`.
    pub fn at(
        endpoint: &str,
        endpoint_host: &str,
        from: &str,
        addr: SocketAddr,
        reach: &Reach,
        expected: bool,
    ) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            endpoint_host: endpoint_host.to_string(),
            from: from.to_string(),
            addr: addr.to_string(),
            expected,
            answered: matches!(reach, Reach::Connected),
            seen: match reach {
                Reach::Connected => "connected".into(),
                Reach::Refused => "refused".into(),
                Reach::NoRoute(why) => format!("no answer ({why})"),
            },
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} on `{}` answers at {} from host `{}`, where the design allows no client",
            self.endpoint, self.endpoint_host, self.addr, self.from
        )
    }
}

/// Every departure from the design: an endpoint that answers from a host
/// it should not (per address), or that answers at no address from a host
/// where its clients are.
pub fn judge(cells: &[ReachCell]) -> Vec<String> {
    let mut found = Vec::new();
    for (endpoint, from) in groups(cells) {
        let mine: Vec<&ReachCell> = cells
            .iter()
            .filter(|c| c.endpoint == endpoint && c.from == from)
            .collect();
        if mine.first().is_some_and(|c| c.expected) {
            if !mine.iter().any(|c| c.answered) {
                let tried: Vec<String> = mine
                    .iter()
                    .map(|c| format!("{} {}", c.addr, c.seen))
                    .collect();
                found.push(format!(
                    "{endpoint} on `{}` answers at no address from host `{from}`, where its clients are (tried {})",
                    mine[0].endpoint_host,
                    tried.join(", ")
                ));
            }
        } else {
            found.extend(mine.iter().filter(|c| c.answered).map(|c| c.describe()));
        }
    }
    found
}

fn groups(cells: &[ReachCell]) -> Vec<(String, String)> {
    let mut groups: Vec<(String, String)> = Vec::new();
    for c in cells {
        let key = (c.endpoint.clone(), c.from.clone());
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    groups
}

/// The matrix as a Markdown table: rows are endpoints, columns hosts.
pub fn markdown(cells: &[ReachCell]) -> String {
    let hosts: BTreeSet<&str> = cells.iter().map(|c| c.from.as_str()).collect();
    let mut endpoints: Vec<&str> = cells.iter().map(|c| c.endpoint.as_str()).collect();
    endpoints.dedup();
    let mut out = String::from("| endpoint |");
    for h in &hosts {
        out.push_str(&format!(" from `{h}` |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(hosts.len()));
    out.push('\n');
    for e in endpoints {
        out.push_str(&format!("| {e} |"));
        for h in &hosts {
            let mine: Vec<&ReachCell> = cells
                .iter()
                .filter(|c| c.endpoint == e && c.from == *h)
                .collect();
            let answered = mine.iter().any(|c| c.answered);
            let designed = mine.first().is_some_and(|c| c.expected) == answered;
            let mark = match (answered, designed) {
                (true, true) => "answers ✅",
                (false, true) => "no ✅",
                (true, false) => "answers ❌",
                (false, false) => "no ❌",
            };
            out.push_str(&format!(" {mark} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> InternalEndpoint {
        InternalEndpoint {
            name: "proxy API".into(),
            host: "hub".into(),
            port: 8001,
            answers_from: ["hub".to_string()].into(),
            why: "the hub is its only client".into(),
        }
    }

    #[test]
    fn cells_are_judged_both_ways_and_named_by_host() {
        let e = endpoint();
        let stray = ReachCell::new(
            &e,
            "operator",
            Ipv4Addr::new(10, 77, 1, 2),
            &Reach::Connected,
            false,
        );
        let link = ReachCell::new(
            &e,
            "hub",
            Ipv4Addr::new(10, 77, 1, 2),
            &Reach::Refused,
            true,
        );
        let local = ReachCell::new(&e, "hub", Ipv4Addr::LOCALHOST, &Reach::Connected, true);
        let found = judge(&[stray.clone(), link.clone(), local.clone()]);
        assert_eq!(
            found,
            ["proxy API on `hub` answers at 10.77.1.2:8001 from host `operator`, where the design allows no client"]
        );
        let silent = ReachCell::new(&e, "hub", Ipv4Addr::LOCALHOST, &Reach::Refused, true);
        let found = judge(&[link.clone(), silent]);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].contains("answers at no address from host `hub`"),
            "{found:?}"
        );
        let table = markdown(&[stray, link, local]);
        assert!(
            table.contains("| proxy API | answers ✅ | answers ❌ |"),
            "{table}"
        );
    }
}
