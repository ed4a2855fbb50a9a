@enterprise
Feature: Labs trust the organisation's CA for outbound traffic, and only there
  Behind a TLS-inspecting proxy or in front of an internal package index,
  user tools in a lab must trust the organisation's CA. The init step merges
  the org bundle into the system bundle and points REQUESTS_CA_BUNDLE,
  SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, CURL_CA_BUNDLE and GIT_SSL_CAINFO at
  it. Every tool must then succeed with the merged bundle and fail without
  it, and that outbound trust must never turn into inbound access.

  Background:
    Given the JupyterHub stack is up with internal SSL
    And the stack merges the organisation's CA bundle into the labs' trust

  Scenario: The merged bundle is exactly the system bundle plus the org bundle
    Then the merged bundle holds every system certificate, then every org certificate, none lost at the seam
    And the lab's environment points all five CA variables at the merged bundle
    And the lab's own system store trusts the public endpoint and not the org CA

  Scenario: User tools trust the org CA with the merged bundle, and not without it
    When each tool in the lab fetches each outbound endpoint, with the merged bundle and with the system bundle alone
    Then every run through the inspecting proxy crossed it on the wire: lab to proxy, then proxy to internet
    And every result matches the enterprise trust table

  Scenario: Trusting the org CA outbound grants no inbound access
    Given the hub carries the merged bundle exactly when the stack file puts it there
    When I probe every endpoint with every client identity
    Then every verdict matches JupyterHub's trust graph
