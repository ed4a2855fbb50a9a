"""By hand, not in CI: does the client CA file KubeSpawner gives a lab
admit another user's lab certificate? (docs/findings.md)

Needs a venv with `jupyterhub-kubespawner==7.0.0 jupyterhub==5.5.0`, and an
internal store from `jupyterhub --generate-certs` with
`c.JupyterHub.internal_ssl = True` and
`c.JupyterHub.internal_certs_location = STORE`:

    python kubespawner-lab-trust.py STORE

Uses only the components' own code: certipy signs two users' lab
certificates as `Spawner.create_certs` does, KubeSpawner's `make_secret`
writes alice's Secret, and a server with JupyterHub's `make_ssl_context`
(as jupyterhub-singleuser serves) takes each client certificate or not.
"""

import base64
import socket
import ssl
import sys
import threading

from certipy import Certipy
from jupyterhub.utils import make_ssl_context
from kubespawner.objects import make_secret

store = sys.argv[1]
certipy = Certipy(store_dir=store)
labs = {
    user: certipy.create_signed_pair(
        "user-" + user,
        "notebooks-ca",
        alt_names=["DNS:localhost", "IP:127.0.0.1"],
        overwrite=True,
    )["files"]
    for user in ["alice", "bob"]
}
paths = {
    "keyfile": labs["alice"]["key"],
    "certfile": labs["alice"]["cert"],
    "cafile": f"{store}/notebooks-ca_trust.crt",
}
secret = make_secret("jupyter-alice", "alice", paths, f"{store}/hub-ca_trust.crt", [])
kubespawner_bundle = f"{store}/alice-notebooks-ca_trust.crt"
with open(kubespawner_bundle, "w") as f:
    f.write(base64.b64decode(secret.data["notebooks-ca_trust.crt"]).decode())


def handshake(client_ca, client):
    server = make_ssl_context(
        paths["keyfile"], paths["certfile"], cafile=client_ca,
        purpose=ssl.Purpose.CLIENT_AUTH,
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    seen = {}

    def serve():
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                subject = dict(x[0] for x in tls.getpeercert()["subject"])
                seen["verdict"] = f"accepted {subject['commonName']}"
        except ssl.SSLError as e:
            seen["verdict"] = f"rejected ({e.reason})"

    thread = threading.Thread(target=serve)
    thread.start()
    context = ssl.create_default_context(cafile=f"{store}/hub-ca_trust.crt")
    context.check_hostname = False
    context.load_cert_chain(client["cert"], client["key"])
    try:
        with context.wrap_socket(socket.create_connection(listener.getsockname())) as c:
            c.recv(1)
    except (ssl.SSLError, OSError):
        pass
    thread.join()
    listener.close()
    return seen["verdict"]


proxy_api = {"cert": f"{store}/proxy-api/proxy-api.crt", "key": f"{store}/proxy-api/proxy-api.key"}
print("KubeSpawner's lab bundle, bob's lab cert:", handshake(kubespawner_bundle, labs["bob"]))
print("KubeSpawner's lab bundle, the proxy API's cert:", handshake(kubespawner_bundle, proxy_api))
print("notebooks-ca_trust.crt alone, bob's lab cert:", handshake(paths["cafile"], labs["bob"]))
