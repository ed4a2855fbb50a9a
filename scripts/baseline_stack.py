"""The benchmark's baseline: the same JupyterHub config hubtrust renders,
started by a plain script and polled for readiness, with no harness.

Prints `ready_epoch=<seconds since the epoch>` once the hub answers
/hub/health through the proxy and one lab answers /user/<name>/api, then
stops the hub (which stops its proxy and labs).
"""

import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

config, jupyterhub, user = sys.argv[1], sys.argv[2], sys.argv[3]
token = os.environ["HUBTRUST_SERVICE_TOKEN"]
base = "https://127.0.0.1:8000"
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE


def call(method, path, ok=(200,)):
    request = urllib.request.Request(base + path, method=method, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=3) as response:
            return response.status in ok
    except (urllib.error.URLError, OSError) as e:
        return getattr(e, "code", None) in ok


def poll(method, path, ok=(200,), timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if call(method, path, ok):
            return
        if hub.poll() is not None:
            raise SystemExit(f"baseline: jupyterhub exited ({hub.returncode}) before {path} answered")
        time.sleep(0.05)
    raise SystemExit(f"baseline: {path} not ready within {timeout}s")


# The hub logs to stderr, which lands in the baseline log hubtrust shows on failure.
hub = subprocess.Popen([jupyterhub, "-f", config], stdout=subprocess.DEVNULL)
try:
    poll("GET", "/hub/health")
    poll("POST", f"/hub/api/users/{user}", ok=(201, 409))
    poll("POST", f"/hub/api/users/{user}/server", ok=(201, 202))
    poll("GET", f"/user/{user}/api")
    print(f"ready_epoch={time.time():.6f}", flush=True)
finally:
    hub.terminate()
    hub.wait(timeout=30)
