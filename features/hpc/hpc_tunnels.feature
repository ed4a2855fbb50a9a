@hpc
Feature: Labs on an HPC compute node, reached only through SSH tunnels
  An HPC site runs each lab on a compute node that has no route to the hub.
  The lab reaches the hub through a login node's remote tunnel; the hub
  reaches the lab through a tunnel the broker holds on a login node. The
  operator wants proof that this works, that every hop is protected, and
  that the keys and certificates involved allow exactly what they should.

  Background:
    Given the JupyterHub stack is up with internal SSL

  Scenario: The compute node and the hub cannot reach each other directly
    Then every compute node reaches the login nodes and nothing on the hub's host or the machine running the site
    And the hub's host reaches the login nodes and no compute node

  Scenario: A lab on the compute node runs a cell and answers through the proxy
    Then every user's lab answers through the proxy
    And the broker reports every lab's tunnel as running
    When the lab looks at the hub through every login node
    Then the lab runs as its own user and calls the hub through a login node
    And the lab's certificates on the compute node are 0600 and owned by its user

  Scenario: The proxy's certificate covers every login node
    Then the proxy's certificate lists every login node's bind address
    When the lab looks at the hub through every login node
    Then every login node verifies with the lab's own client CA bundle

  Scenario: Every hop between hosts is TLS or SSH
    # Login node to compute node is the one segment outside SSH: cleartext
    # TCP by design, protected only by the lab's own TLS riding inside.
    Given every link between hosts is being captured
    When a user logs in, opens their lab and runs a notebook cell
    Then every flow that crosses hosts is TLS 1.2 or newer, or SSH
    And the cleartext last hop between login and compute nodes carries only the lab's own TLS and SSH
    And no canary appears in plaintext on any link

  Scenario: Tunnel keys start, check and stop tunnels and never get a shell
    Then the broker's key can ask each login node for its tunnel's status
    And the broker's key gets no shell and no other command on any login node
    And the spawner's key gets no shell on a login node or the compute node

  Scenario: The broker speaks the tunnel REST contract and wants its token
    Then the broker answers its health check
    And the broker refuses calls without its token or with a wrong one
    And the broker refuses a tunnel through a login node it does not know
    And the broker answers 404 for a servername it does not know

  Scenario: A killed ssh process shows in the broker's health, and the broker recovers
    When the broker's ssh connection to "login-1" is killed
    Then the broker's health reports "ssh master to login-1" as down
    And the broker's health recovers
    And every user's lab answers through the proxy

  Scenario: After a broker restart, its tunnels come back through /api/restart/
    When the tunnel broker restarts
    Then the broker's health reports "ssh master to login-1" as down
    And no user's lab answers through the proxy
    When the broker is asked to re-create its tunnels
    Then the broker's health recovers
    And the broker reports every lab's tunnel as running
    And every user's lab answers through the proxy

  Scenario: The broker refuses a login node whose host key changed
    When the host key of "login-2" changes
    Then the broker refuses a tunnel through "login-2", naming its host key
    When the host key of "login-2" is restored
    Then the broker's health recovers
    And the broker accepts a tunnel through "login-2"

  Scenario: An unreachable login node is a clear error from the broker
    When sshd on "login-2" stops
    Then the broker refuses a tunnel through "login-2", naming the refused connection
    When sshd on "login-2" starts again
    Then the broker's health recovers
    And the broker accepts a tunnel through "login-2"

  Scenario: Adding a login node takes a new proxy certificate and a proxy restart, nothing else
    Given the lab's process is noted
    When login node "login-3" joins the site
    And the proxy's certificate is re-issued from the same CA for every login node
    And only the proxy is restarted
    Then every user's lab answers through the proxy
    And the lab's process is the one noted
    When the lab looks at the hub through every login node
    Then every login node verifies with the lab's own client CA bundle

  Scenario: A proxy certificate that misses a login node fails there with a name mismatch
    Given login node "login-3" has joined the site
    When the proxy's certificate is re-issued without "login-3" and only the proxy is restarted
    And the lab looks at the hub through every login node
    Then the lab's connection through "login-3" fails with a name mismatch and every other login node verifies
    When the proxy's certificate is re-issued from the same CA for every login node
    And only the proxy is restarted
    Then every user's lab answers through the proxy

  Scenario: A proxy certificate from a new CA breaks running labs, and the suite says so
    # Nothing reaches the lab through the proxy now, so the look is taken
    # on the compute node itself, as the lab's user with the lab's own
    # environment.
    When the proxy's certificate is re-issued from a new CA and only the proxy is restarted
    And the lab looks at the hub through every login node, from its compute node
    Then no login node verifies with the lab's own client CA bundle
    When the proxy's certificate is re-issued from the same CA for every login node
    And only the proxy is restarted
    Then every user's lab answers through the proxy

  Scenario: A compute node whose clock runs 30 s behind accepts a freshly minted proxy certificate
    When the proxy's certificate is re-issued from the same CA for every login node
    And only the proxy is restarted
    And the lab looks at the hub through every login node, from its compute node with its clock 30 seconds behind
    Then every login node accepts the proxy's certificate on the lagging node, else the certificate's notBefore is flagged

  Scenario: A certificate minted with no allowance for clock skew is refused by a lagging compute node
    # The control for the scenario above: JupyterHub's certipy mints
    # certificates valid from this very second.
    When the proxy's certificate is re-issued valid from this very second and only the proxy is restarted
    And the lab looks at the hub through every login node, from its compute node with its clock 30 seconds behind
    Then the lagging node refuses the proxy's certificate as not yet valid, and the finding names its notBefore
