# A deployment's own JupyterHub config, as a deployment repository keeps
# it. hubtrust loads it first, then applies the settings it needs to run
# the stack (addresses, ports, internal SSL locations, its service), and
# reports every setting of this file that ends up with another value.
c = get_config()  # noqa: F821

# Listening everywhere is what this deployment does in production; hubtrust
# runs the hub API on loopback and says so in its report.
c.JupyterHub.hub_ip = "0.0.0.0"
c.Spawner.start_timeout = 120
c.Spawner.default_url = "/lab"
c.JupyterHub.template_vars = {"org": "Example Org"}
c.JupyterHub.shutdown_on_logout = True
