//! HPC steps: compute and login nodes, the tunnel keys, the broker's REST
//! contract. Each calls one harness API and asserts on its answer.

use cucumber::{given, then, when};
use hubtrust_harness::hpc::checks::{LabEnvironment, LoginNodeView, ReachFinding, SshRole};
use hubtrust_harness::secret::Secret;

use crate::world::Operator;

fn judge_reach(findings: &[ReachFinding]) -> anyhow::Result<()> {
    anyhow::ensure!(
        findings.iter().any(|f| f.must_route) && findings.iter().any(|f| !f.must_route),
        "the probes cover no login node or no forbidden host: nothing was proved"
    );
    let wrong: Vec<String> = findings
        .iter()
        .filter(|f| !f.as_designed())
        .map(ReachFinding::describe)
        .collect();
    anyhow::ensure!(
        wrong.is_empty(),
        "not as designed:\n  {}",
        wrong.join("\n  ")
    );
    Ok(())
}

#[then("every compute node reaches the login nodes and nothing on the hub's host or the machine running the site")]
async fn compute_reaches_only_login(world: &mut Operator) -> anyhow::Result<()> {
    let stack = world.stack()?;
    for compute in stack.hpc()?.compute_nodes()? {
        judge_reach(&stack.hpc()?.reachability_from(&compute).await?)?;
    }
    Ok(())
}

#[then("the hub's host reaches the login nodes and no compute node")]
async fn hub_reaches_only_login(world: &mut Operator) -> anyhow::Result<()> {
    let stack = world.stack()?;
    let hub = stack.spec.topology.hub_host.clone();
    judge_reach(&stack.hpc()?.reachability_from(&hub).await?)
}

fn broker(world: &Operator) -> anyhow::Result<&hubtrust_harness::hpc::BrokerClient> {
    world
        .stack()?
        .site::<hubtrust_harness::hpc::HpcSite>()
        .and_then(|site| site.broker_client.as_ref())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "this stack has no tunnel broker (run @hpc with --stack fixtures/stacks/hpc.toml)"
            )
        })
}

#[then("the broker reports every lab's tunnel as running")]
async fn broker_reports_tunnels(world: &mut Operator) -> anyhow::Result<()> {
    let users = world.stack()?.users();
    anyhow::ensure!(!users.is_empty(), "no lab to check");
    for user in users {
        let answer = broker(world)?
            .get(&format!("/api/tunnel/{user}-default/"))
            .await
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            answer.status == 200 && answer.body["running"] == true,
            "the broker says of {user}'s tunnel: HTTP {} {}\n{}",
            answer.status,
            answer.body,
            world.stack()?.hpc()?.tunnel_log_tail().unwrap_or_default()
        );
    }
    Ok(())
}

#[when("the lab looks at the hub through every login node")]
async fn lab_looks(world: &mut Operator) -> anyhow::Result<()> {
    let stack = world.stack()?;
    let user = world.first_user()?;
    let hpc = stack.hpc()?;
    let view = hpc
        .lab_view(&user)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", hpc.tunnel_log_tail().unwrap_or_default()))?;
    record_lab_view(world, (user, view.0, view.1));
    Ok(())
}

#[when("the lab looks at the hub through every login node, from its compute node")]
async fn lab_looks_on_node(world: &mut Operator) -> anyhow::Result<()> {
    let user = world.first_user()?;
    let view = world.stack()?.hpc()?.lab_view_on_node(&user, None).await?;
    record_lab_view(world, (user, view.0, view.1));
    Ok(())
}

#[when(
    expr = "the lab looks at the hub through every login node, from its compute node with its clock {int} seconds behind"
)]
async fn lab_looks_skewed(world: &mut Operator, secs: u32) -> anyhow::Result<()> {
    let user = world.first_user()?;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let view = world
        .stack()?
        .hpc()?
        .lab_view_on_node(&user, Some(secs))
        .await?;
    // The skew must be real, or the check proves nothing.
    let behind = before - view.1.time;
    anyhow::ensure!(
        behind >= f64::from(secs) - 5.0,
        "the compute node's clock was only {behind:.1} s behind, not {secs} s"
    );
    record_lab_view(world, (user, view.0, view.1));
    Ok(())
}

#[when("the proxy's certificate is re-issued valid from this very second and only the proxy is restarted")]
async fn reissue_without_allowance(world: &mut Operator) -> anyhow::Result<()> {
    let stack = world.stack()?;
    stack.hpc()?.reissue_proxy_cert(None, false, false)?;
    stack.hpc()?.restart_proxy().await?;
    Ok(())
}

/// The proxy certificate's notBefore, for findings about clock skew.
fn proxy_not_before(world: &Operator) -> String {
    world
        .stack()
        .ok()
        .and_then(|s| s.hpc().ok()?.proxy_not_before().ok())
        .unwrap_or_else(|| "unknown".into())
}

#[then("every login node accepts the proxy's certificate on the lagging node, else the certificate's notBefore is flagged")]
fn skewed_accepts(world: &mut Operator) -> anyhow::Result<()> {
    let (_, views, env) = lab_view(world)?;
    anyhow::ensure!(!views.is_empty(), "the lab tried no login node");
    let rejected: Vec<String> = views
        .iter()
        .filter(|v| v.tls != "ok")
        .map(|v| {
            format!(
                "{}: {}",
                world
                    .stack()
                    .ok()
                    .and_then(|s| Some(s.hpc().ok()?.name_of(&v.bind)))
                    .unwrap_or_default(),
                v.tls
            )
        })
        .collect();
    anyhow::ensure!(
        rejected.is_empty(),
        "FINDING notBefore: {} and the compute node's clock read {:.0} (seconds since the epoch); it refused:\n  {}",
        world
            .stack()?
            .hpc()?.proxy_chain_not_before()
            .unwrap_or_else(|e| format!("the chain's notBefore could not be read ({e})")),
        env.time,
        rejected.join("\n  ")
    );
    Ok(())
}

#[then("the lagging node refuses the proxy's certificate as not yet valid, and the finding names its notBefore")]
fn skewed_refuses(world: &mut Operator) -> anyhow::Result<()> {
    let (_, views, _) = lab_view(world)?;
    anyhow::ensure!(!views.is_empty(), "the lab tried no login node");
    let not_refused: Vec<String> = views
        .iter()
        .filter(|v| !v.tls.contains("not yet valid"))
        .map(|v| format!("{}: {}", v.bind, v.tls))
        .collect();
    anyhow::ensure!(
        not_refused.is_empty(),
        "a certificate valid from this very second should be refused by a node 30 s behind: {not_refused:?}"
    );
    let not_before = proxy_not_before(world);
    anyhow::ensure!(
        not_before != "unknown",
        "the certificate's notBefore could not be read"
    );
    Ok(())
}

#[then("the lab runs as its own user and calls the hub through a login node")]
fn lab_calls_through_login(world: &mut Operator) -> anyhow::Result<()> {
    let (user, views, env) = lab_view(world)?;
    let (_, expected_uid) = world.stack()?.hpc()?.staged_files(user)?;
    anyhow::ensure!(
        env.uid == expected_uid,
        "the lab of {user} runs as uid {}, expected {expected_uid}",
        env.uid
    );
    let binds = world.stack()?.hpc()?.bind_addresses()?;
    let through_login = binds
        .iter()
        .any(|b| env.api_url.starts_with(&format!("https://{b}:")));
    anyhow::ensure!(
        through_login,
        "the lab's JUPYTERHUB_API_URL is {}, not a login node's bind address {binds:?}",
        env.api_url
    );
    let first = views
        .iter()
        .find(|v| env.api_url.contains(&v.bind))
        .ok_or_else(|| anyhow::anyhow!("the lab did not try its own login node"))?;
    anyhow::ensure!(
        first.hub_api == *user,
        "through {} the hub API answered {:?} ({}), expected the user {user}",
        first.bind,
        first.hub_api,
        first.tls
    );
    Ok(())
}

#[then("the lab's certificates on the compute node are 0600 and owned by its user")]
fn staged_certificates(world: &mut Operator) -> anyhow::Result<()> {
    let stack = world.stack()?;
    for user in stack.users() {
        let (files, uid) = stack.hpc()?.staged_files(&user)?;
        anyhow::ensure!(
            files
                .iter()
                .any(|f| f.path.extension().is_some_and(|e| e == "key")),
            "no private key was staged for {user}: {files:?}"
        );
        let wrong: Vec<String> = files
            .iter()
            .filter(|f| f.mode != 0o600 || f.uid != uid)
            .map(|f| format!("{} is {:04o} owned by {}", f.path.display(), f.mode, f.uid))
            .collect();
        anyhow::ensure!(
            wrong.is_empty(),
            "staged for {user} (uid {uid}):\n  {}",
            wrong.join("\n  ")
        );
    }
    Ok(())
}

#[then("the proxy's certificate lists every login node's bind address")]
fn proxy_cert_lists_logins(world: &mut Operator) -> anyhow::Result<()> {
    let (binds, sans) = world.stack()?.hpc()?.proxy_certificate()?;
    let missing: Vec<String> = binds
        .iter()
        .map(|b| format!("IP:{b}"))
        .filter(|b| !sans.contains(b))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "the proxy's certificate lacks {missing:?} (it lists {sans:?})"
    );
    Ok(())
}

#[then("every login node verifies with the lab's own client CA bundle")]
fn every_login_verifies(world: &mut Operator) -> anyhow::Result<()> {
    let (user, views, _) = lab_view(world)?;
    let binds = world.stack()?.hpc()?.bind_addresses()?;
    anyhow::ensure!(
        views.len() == binds.len(),
        "the lab tried {} of {} login nodes",
        views.len(),
        binds.len()
    );
    let failed: Vec<String> = views
        .iter()
        .filter(|v| v.tls != "ok" || v.hub_api != *user)
        .map(|v| format!("{}: TLS {}, hub API {:?}", v.bind, v.tls, v.hub_api))
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "from the lab:\n  {}",
        failed.join("\n  ")
    );
    Ok(())
}

#[then("the broker's key can ask each login node for its tunnel's status")]
async fn broker_key_status(world: &mut Operator) -> anyhow::Result<()> {
    let stack = world.stack()?;
    let hpc = stack.hpc()?;
    let logins = hpc.login_nodes()?;
    let outcomes = futures::future::try_join_all(
        logins
            .iter()
            .map(|login| hpc.ssh(SshRole::Broker, login, Some("status"))),
    )
    .await?;
    for (login, outcome) in logins.iter().zip(outcomes) {
        anyhow::ensure!(
            outcome.exit == Some(0) && outcome.stdout.trim() == "running",
            "`status` on {login}: {}",
            outcome.describe()
        );
    }
    Ok(())
}

/// A forced command's refusal: it exits non-zero and ran nothing asked.
fn refused(outcome: &hubtrust_harness::hpc::checks::SshOutcome, marker: &str) -> bool {
    outcome.exit != Some(0) && !outcome.stdout.contains(marker)
}

#[then("the broker's key gets no shell and no other command on any login node")]
async fn broker_key_no_shell(world: &mut Operator) -> anyhow::Result<()> {
    let stack = world.stack()?;
    let hpc = stack.hpc()?;
    let mut attempts = Vec::new();
    for login in hpc.login_nodes()? {
        for command in [
            None,
            Some("echo HUBTRUST-SHELL"),
            Some("sh -c 'echo HUBTRUST-SHELL'"),
        ] {
            attempts.push((login.clone(), command));
        }
    }
    // Every attempt at once: each is a whole ssh handshake.
    let outcomes = futures::future::try_join_all(
        attempts
            .iter()
            .map(|(login, command)| hpc.ssh(SshRole::Broker, login, *command)),
    )
    .await?;
    for ((login, command), outcome) in attempts.iter().zip(outcomes) {
        anyhow::ensure!(
            refused(&outcome, "HUBTRUST-SHELL") && outcome.stderr.contains("refused"),
            "the broker's key on {login} with {command:?} was not refused by the forced command: {}",
            outcome.describe()
        );
    }
    Ok(())
}

#[then("the spawner's key gets no shell on a login node or the compute node")]
async fn spawner_key_no_shell(world: &mut Operator) -> anyhow::Result<()> {
    let stack = world.stack()?;
    let hpc = stack.hpc()?;
    let mut attempts = Vec::new();
    for node in hpc.login_nodes()?.into_iter().chain(hpc.compute_nodes()?) {
        for command in [None, Some("echo HUBTRUST-SHELL")] {
            attempts.push((node.clone(), command));
        }
    }
    let outcomes = futures::future::try_join_all(
        attempts
            .iter()
            .map(|(node, command)| hpc.ssh(SshRole::Spawner, node, *command)),
    )
    .await?;
    for ((node, command), outcome) in attempts.iter().zip(outcomes) {
        anyhow::ensure!(
            refused(&outcome, "HUBTRUST-SHELL"),
            "the spawner's key on {node} with {command:?} was not refused: {}",
            outcome.describe()
        );
    }
    Ok(())
}

#[then("the broker answers its health check")]
async fn broker_health(world: &mut Operator) -> anyhow::Result<()> {
    let answer = broker(world)?
        .get("/api/health/")
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        answer.status == 200,
        "GET /api/health/: HTTP {} {}",
        answer.status,
        answer.body
    );
    Ok(())
}

#[then("the broker refuses calls without its token or with a wrong one")]
async fn broker_wants_token(world: &mut Operator) -> anyhow::Result<()> {
    let client = broker(world)?;
    for (what, token) in [
        ("no token", Secret::new("")),
        ("a wrong token", Secret::generate()),
    ] {
        let answer = client
            .with_token(token)
            .get("/api/tunnel/")
            .await
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            answer.status == 401 || answer.status == 403,
            "with {what} the broker answered HTTP {} {}",
            answer.status,
            answer.body
        );
    }
    Ok(())
}

#[then("the broker refuses a tunnel through a login node it does not know")]
async fn broker_unknown_login(world: &mut Operator) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "servername": "hubtrust-probe", "hostname": "login-99",
        "svc_name": "probe", "svc_port": 1, "target_node": "10.0.0.1", "target_port": 1,
    });
    let answer = broker(world)?
        .post("/api/tunnel/", &body)
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        answer.status == 400 && answer.body.to_string().contains("login-99"),
        "a tunnel through login-99: HTTP {} {}",
        answer.status,
        answer.body
    );
    Ok(())
}

#[then("the broker answers 404 for a servername it does not know")]
async fn broker_unknown_servername(world: &mut Operator) -> anyhow::Result<()> {
    let answer = broker(world)?
        .get("/api/tunnel/nobody-default/")
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        answer.status == 404 && answer.body.to_string().contains("nobody-default"),
        "GET /api/tunnel/nobody-default/: HTTP {} {}",
        answer.status,
        answer.body
    );
    Ok(())
}

#[when(expr = "the broker's ssh connection to {string} is killed")]
fn kill_master(world: &mut Operator, login: String) -> anyhow::Result<()> {
    world.stack()?.hpc()?.kill_ssh_master(&login)?;
    Ok(())
}

#[then(expr = "the broker's health reports {string} as down")]
async fn health_reports_down(world: &mut Operator, what: String) -> anyhow::Result<()> {
    broker(world)?
        .await_health(
            |a| a.status == 503 && a.body.to_string().contains(&what),
            std::time::Duration::from_secs(10),
        )
        .await
        .map_err(|e| anyhow::anyhow!("the broker's health never named {what:?} as down: {e}"))?;
    Ok(())
}

#[then("the broker's health recovers")]
async fn health_recovers(world: &mut Operator) -> anyhow::Result<()> {
    broker(world)?
        .await_health(|a| a.status == 200, std::time::Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

#[when("the tunnel broker restarts")]
async fn restart_broker(world: &mut Operator) -> anyhow::Result<()> {
    world.stack()?.hpc()?.restart_broker().await?;
    Ok(())
}

#[then("no user's lab answers through the proxy")]
async fn no_lab_answers(world: &mut Operator) -> anyhow::Result<()> {
    let stack = world.stack()?;
    for user in stack.users() {
        let status = stack.get_via_proxy(&format!("/user/{user}/api")).await?;
        anyhow::ensure!(
            status != 200,
            "the lab of {user} still answered through the proxy with its tunnel gone"
        );
    }
    Ok(())
}

#[when("the broker is asked to re-create its tunnels")]
async fn ask_restart(world: &mut Operator) -> anyhow::Result<()> {
    let answer = broker(world)?
        .post("/api/restart/", &serde_json::json!({}))
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        answer.status == 200,
        "POST /api/restart/: HTTP {} {}",
        answer.status,
        answer.body
    );
    Ok(())
}

#[when(regex = r#"^the host key of "([^"]+)" (changes|is restored)$"#)]
async fn host_key(world: &mut Operator, node: String, what: String) -> anyhow::Result<()> {
    let fresh = what == "changes";
    world.stack()?.hpc()?.set_host_key(&node, fresh).await?;
    Ok(())
}

async fn tunnel_through(
    world: &Operator,
    login: &str,
) -> anyhow::Result<hubtrust_harness::hpc::BrokerAnswer> {
    let stack = world.stack()?;
    let user = world.first_user()?;
    let request = stack.hpc()?.tunnel_request(&user, login)?;
    broker(world)?
        .post("/api/tunnel/", &request)
        .await
        .map_err(anyhow::Error::msg)
}

#[then(
    regex = r#"^the broker refuses a tunnel through "([^"]+)", naming (its host key|the refused connection)$"#
)]
async fn refuses_tunnel(world: &mut Operator, login: String, cause: String) -> anyhow::Result<()> {
    let answer = tunnel_through(world, &login).await?;
    let body = answer.body.to_string();
    let named = match cause.as_str() {
        "its host key" => {
            body.contains("Host key verification failed")
                || body.contains("IDENTIFICATION HAS CHANGED")
        }
        _ => body.contains(&login) && body.contains("Connection refused"),
    };
    anyhow::ensure!(
        answer.status >= 400 && named,
        "a tunnel through {login}: HTTP {} {body}",
        answer.status
    );
    Ok(())
}

#[when(regex = r#"^sshd on "([^"]+)" (stops|starts again)$"#)]
async fn sshd_state(world: &mut Operator, node: String, what: String) -> anyhow::Result<()> {
    let running = what == "starts again";
    world.stack()?.hpc()?.set_sshd(&node, running).await?;
    Ok(())
}

#[then(expr = "the broker accepts a tunnel through {string}")]
async fn accepts_tunnel(world: &mut Operator, login: String) -> anyhow::Result<()> {
    let answer = tunnel_through(world, &login).await?;
    anyhow::ensure!(
        answer.status == 201 && answer.body["running"] == true,
        "a tunnel through {login}: HTTP {} {}",
        answer.status,
        answer.body
    );
    let name = answer.body["servername"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    broker(world)?
        .delete(&format!("/api/tunnel/{name}/"))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

#[given("the lab's process is noted")]
fn note_lab_process(world: &mut Operator) -> anyhow::Result<()> {
    let stack = world.stack()?;
    let user = world.first_user()?;
    world.hpc.lab_process =
        Some(stack.hpc()?.lab_process(&user).ok_or_else(|| {
            anyhow::anyhow!("no lab process of {user} found on the compute node")
        })?);
    Ok(())
}

#[then("the lab's process is the one noted")]
fn lab_process_unchanged(world: &mut Operator) -> anyhow::Result<()> {
    let noted = world
        .hpc
        .lab_process
        .ok_or_else(|| anyhow::anyhow!("the lab's process was not noted"))?;
    let user = world.first_user()?;
    let now = world.stack()?.hpc()?.lab_process(&user);
    anyhow::ensure!(
        now == Some(noted),
        "the lab of {user} was restarted: (pid, start) was {noted:?}, is {now:?}"
    );
    Ok(())
}

/// Keeps what the lab saw in the run's report, with the site as it stands.
fn record_lab_view(world: &mut Operator, view: (String, Vec<LoginNodeView>, LabEnvironment)) {
    if let (Ok(mut report), Ok(stack)) = (crate::world::report().lock(), world.stack()) {
        if let Ok(mut section) = stack.hpc().and_then(|hpc| hpc.report()) {
            let earlier = report.hpc.take().map(|h| h.lab_views).unwrap_or_default();
            section.lab_views = earlier;
            section
                .lab_views
                .extend(view.1.iter().map(|v| hubtrust_harness::report::HpcLabView {
                    scenario: world.scenario.clone(),
                    bind: v.bind.clone(),
                    tls: v.tls.clone(),
                    hub_api_user: v.hub_api.clone(),
                }));
            report.hpc = Some(section);
        }
    }
    world.hpc.lab_view = Some(view);
}

/// What the lab saw, from an earlier "looks at the hub" step.
fn lab_view(
    world: &Operator,
) -> anyhow::Result<&(
    String,
    Vec<hubtrust_harness::hpc::checks::LoginNodeView>,
    hubtrust_harness::hpc::checks::LabEnvironment,
)> {
    world
        .hpc
        .lab_view
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the lab was not asked to look"))
}

#[when(expr = "login node {string} joins the site")]
async fn login_node_joins(world: &mut Operator, name: String) -> anyhow::Result<()> {
    world.stack()?.hpc()?.add_login_node(&name).await?;
    Ok(())
}

#[given(expr = "login node {string} has joined the site")]
async fn login_node_has_joined(world: &mut Operator, name: String) -> anyhow::Result<()> {
    let stack = world.stack()?;
    if !stack.hpc()?.login_nodes()?.contains(&name) {
        stack.hpc()?.add_login_node(&name).await?;
        stack.hpc()?.reissue_proxy_cert(None, false, true)?;
        stack.hpc()?.restart_proxy().await?;
    }
    Ok(())
}

#[when("the proxy's certificate is re-issued from the same CA for every login node")]
fn reissue_for_all(world: &mut Operator) -> anyhow::Result<()> {
    world
        .stack()?
        .hpc()?
        .reissue_proxy_cert(None, false, true)?;
    Ok(())
}

#[when("only the proxy is restarted")]
async fn restart_proxy(world: &mut Operator) -> anyhow::Result<()> {
    world.stack()?.hpc()?.restart_proxy().await?;
    Ok(())
}

#[when(
    expr = "the proxy's certificate is re-issued without {string} and only the proxy is restarted"
)]
async fn reissue_without(world: &mut Operator, omit: String) -> anyhow::Result<()> {
    let stack = world.stack()?;
    stack.hpc()?.reissue_proxy_cert(Some(&omit), false, true)?;
    stack.hpc()?.restart_proxy().await?;
    Ok(())
}

#[when("the proxy's certificate is re-issued from a new CA and only the proxy is restarted")]
async fn reissue_from_new_ca(world: &mut Operator) -> anyhow::Result<()> {
    let stack = world.stack()?;
    stack.hpc()?.reissue_proxy_cert(None, true, true)?;
    stack.hpc()?.restart_proxy().await?;
    Ok(())
}

#[then(
    expr = "the lab's connection through {string} fails with a name mismatch and every other login node verifies"
)]
fn name_mismatch_there(world: &mut Operator, login: String) -> anyhow::Result<()> {
    let (user, views, _) = lab_view(world)?;
    let binds = world.stack()?.hpc()?.bind_addresses_of(&login)?;
    let mut saw_login = false;
    for view in views {
        let ip: std::net::Ipv4Addr = view.bind.parse()?;
        if binds.contains(&ip) {
            saw_login = true;
            anyhow::ensure!(
                view.tls == "name-mismatch",
                "through {login} ({}) the lab saw TLS {:?}, expected a name mismatch",
                view.bind,
                view.tls
            );
        } else {
            anyhow::ensure!(
                view.tls == "ok" && view.hub_api == *user,
                "through {} the lab saw TLS {:?}, hub API {:?}",
                view.bind,
                view.tls,
                view.hub_api
            );
        }
    }
    anyhow::ensure!(saw_login, "the lab did not try {login}");
    Ok(())
}

#[then("no login node verifies with the lab's own client CA bundle")]
fn none_verifies(world: &mut Operator) -> anyhow::Result<()> {
    let (_, views, _) = lab_view(world)?;
    anyhow::ensure!(!views.is_empty(), "the lab tried no login node");
    let verified: Vec<&str> = views
        .iter()
        .filter(|v| v.tls == "ok")
        .map(|v| v.bind.as_str())
        .collect();
    anyhow::ensure!(
        verified.is_empty(),
        "a proxy certificate from a CA the labs never saw still verified at {verified:?}"
    );
    anyhow::ensure!(
        views.iter().all(|v| v.tls.starts_with("untrusted")),
        "expected every login node to be untrusted: {views:?}"
    );
    Ok(())
}

#[then(
    "the cleartext last hop between login and compute nodes carries only the lab's own TLS and SSH"
)]
async fn last_hop(world: &mut Operator) -> anyhow::Result<()> {
    let census = crate::steps::wire::census(world).await?.clone();
    let hop = world.stack()?.hpc()?.last_hop(&census)?;
    anyhow::ensure!(
        hop.other.is_empty(),
        "on the last hop, besides the lab's TLS and SSH:\n  {}",
        hop.other.join("\n  ")
    );
    // The hop must have carried the lab's traffic both ways, or this
    // proved nothing.
    anyhow::ensure!(
        hop.tls_to_lab > 0 && hop.tls_to_login > 0,
        "the last hop carried no TLS to the lab ({}) or to a login node's tunnel ({})",
        hop.tls_to_lab,
        hop.tls_to_login
    );
    Ok(())
}
