@core
Feature: Internal TLS of a JupyterHub deployment
  An operator who turned on internal_ssl wants proof, from the running
  components, that every internal endpoint accepts exactly the identities
  JupyterHub's trust graph allows, that every client can verify its server,
  and that the deployment still works through the proxy.

  Background:
    Given the JupyterHub stack is up with internal SSL

  Scenario: The hub answers its health check through the proxy
    When I ask the proxy for "/hub/health"
    Then the answer is HTTP 200

  Scenario: A user's lab answers through the proxy after it is spawned
    Then every user's lab answers through the proxy

  Scenario: The deployment works for a client that knows only its public side
    Then a client with only the public URL, the public CA and the service token runs a cell in every user's lab

  Scenario: Every endpoint accepts exactly the identities the trust graph allows
    When I probe every endpoint with every client identity
    Then every verdict matches JupyterHub's trust graph

  Scenario: Every server's chain verifies for the clients that really use it
    When each real client connects with its own bundle, name and certificate
    Then every connection is accepted over TLS 1.2 or newer

  Scenario: The proxy API is guarded by its token, not only by TLS
    When the hub's certificate calls the proxy API without the auth token
    Then the proxy API answers HTTP 403
    When the hub's certificate calls the proxy API with the auth token
    Then the proxy API answers HTTP 200

  Scenario: Private keys and the cookie secret are readable only by their owner
    Then every private key and the cookie secret has mode 0600

  Scenario: Every certificate in the stack is inventoried
    When I take the certificate inventory
    Then it lists the internal CA "hub-ca"
    And it lists the internal CA "proxy-api-ca"
    And it lists the internal CA "proxy-client-ca"
    And it lists the internal CA "notebooks-ca"
    And it lists the internal CA "services-ca"
    And every internal leaf is RSA of at least 2048 bits with serverAuth and clientAuth
