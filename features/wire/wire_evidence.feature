@wire
Feature: Nothing readable crosses the wire
  An operator asks the question that matters: is anything readable on the
  network? The answer comes from packets captured on every link between
  hosts, reassembled into flows, not from configuration.

  Background:
    Given the JupyterHub stack is up with internal SSL
    And every link between hosts is being captured

  Scenario: Only protected flows cross hosts, and no secret is readable
    When a user logs in, opens their lab and runs a notebook cell
    Then every flow that crosses hosts is TLS 1.2 or newer, or SSH
    And no canary appears in plaintext on any link

  Scenario: Kernel channels never leave the lab host
    When a user runs a notebook cell through the kernel websocket
    And another host tries the kernel's ZeroMQ ports
    Then no ZeroMQ flow crosses any link
    And no kernel port answered from another host

  Scenario: The detector catches a plaintext canary (self-test)
    When a test helper sends a canary in plaintext HTTP across a link
    Then the census shows a plaintext HTTP flow carrying the canary
