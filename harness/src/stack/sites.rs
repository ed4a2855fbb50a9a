//! Sites: what a deployment holds beyond the hub, the proxy and the labs,
//! as add-ons the stack holds rather than branches inside it. An HPC
//! site (login and compute nodes, sshd, the tunnel broker) and an
//! enterprise's outbound side (the inspecting proxy, the org-CA, public
//! and foreign servers, the merged bundle) each implement [`Site`]; the
//! stack asks whichever it holds.

use crate::error::Result;
use crate::secret::Secret;
use crate::stack::Stack;

#[async_trait::async_trait]
pub trait Site: Send + Sync {
    /// Its name in messages (`HPC site`, `enterprise outbound side`).
    fn name(&self) -> &'static str;

    /// Variables each lab's environment gains.
    fn lab_environment(&self) -> Vec<(String, String)>;

    /// Secrets of the site that must never reach a log or report.
    fn secrets(&self) -> Vec<&Secret>;

    /// What explains a failure that crossed the site (the tunnels' last
    /// log lines), if anything.
    fn diagnosis(&self, stack: &Stack) -> Option<String>;

    /// Puts the site back as designed after a scenario disturbed it, and
    /// waits until it is whole again; a site nothing disturbs has nothing
    /// to do.
    async fn restore(&self, stack: &Stack) -> Result<()>;
}

#[async_trait::async_trait]
impl Site for crate::hpc::HpcSite {
    fn name(&self) -> &'static str {
        "HPC site"
    }

    /// Labs on compute nodes get theirs from the batch spawner.
    fn lab_environment(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.broker_token]
    }

    fn diagnosis(&self, stack: &Stack) -> Option<String> {
        stack.hpc().ok()?.tunnel_log_tail()
    }

    /// Restarts what a fault scenario stopped, puts a rotated proxy
    /// certificate back, and waits until every tunnel answers again.
    async fn restore(&self, stack: &Stack) -> Result<()> {
        stack.hpc()?.restore_site().await
    }
}

#[async_trait::async_trait]
impl Site for crate::enterprise::Outbound {
    fn name(&self) -> &'static str {
        "enterprise outbound side"
    }

    fn lab_environment(&self) -> Vec<(String, String)> {
        crate::enterprise::Outbound::lab_environment(self)
    }

    fn secrets(&self) -> Vec<&Secret> {
        Vec::new()
    }

    fn diagnosis(&self, _stack: &Stack) -> Option<String> {
        None
    }

    /// No scenario changes the outbound side.
    async fn restore(&self, _stack: &Stack) -> Result<()> {
        Ok(())
    }
}
