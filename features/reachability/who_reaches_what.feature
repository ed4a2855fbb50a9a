@core @enterprise @hpc @reachability
Feature: Each internal endpoint answers only where its clients are
  The hub API, the proxy's API, the labs and the tunnel broker are internal:
  their clients run on known hosts. The operator wants proof that each
  answers from those hosts and from no other, the operator's own machine
  included, so an endpoint left listening on every interface is caught even
  where TLS and tokens would still stop a stranger.

  Background:
    Given the JupyterHub stack is up with internal SSL

  Scenario: Every internal endpoint answers from its clients' hosts and from no other
    When every internal endpoint is probed from every host of the topology
    Then each answers from the hosts of its clients and from no other host
