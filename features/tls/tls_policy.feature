@core @wire @enterprise @hpc @tls
Feature: Every TLS endpoint speaks only what the TLS policy allows
  An outside scanner, pointed at a deployment, finds every protocol
  version and cipher suite each endpoint still accepts. The operator wants
  the same answer from the suite itself, judged against a named policy
  (Mozilla's "intermediate" unless the stack file chooses another), with
  every exception written down beside its reason.

  Background:
    Given the JupyterHub stack is up with internal SSL

  Scenario: Every TLS endpoint accepts only the versions and suites the policy allows
    When every TLS endpoint of the stack is scanned
    Then no endpoint accepts a protocol version or TLS 1.2 suite the policy forbids
