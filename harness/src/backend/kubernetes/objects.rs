//! Small Kubernetes objects hubtrust writes for its own pods.

use serde_json::{json, Value};

/// The labels every object of hubtrust's own carries, `app` naming it.
pub fn labels(app: &str) -> Value {
    json!({ "app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "hubtrust" })
}

/// A Service in front of the pod labelled `app`, on `ports` (each its own
/// target port).
pub fn service(name: &str, app: &str, namespace: &str, ports: &[(String, u16)]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": namespace, "labels": labels(app) },
        "spec": {
            "selector": { "app.kubernetes.io/name": app },
            "ports": ports
                .iter()
                .map(|(port_name, port)| json!({ "name": port_name, "port": port, "targetPort": port }))
                .collect::<Vec<_>>(),
        },
    })
}
