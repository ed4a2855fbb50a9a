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

/// A pod of hubtrust's own, run as the chart runs its pods: user and
/// group 1000, no privilege escalation, no capabilities; its Secret
/// volumes (mode 0440) belong to group 1000, so only the pod's user reads
/// them. `container` names its image, command, ports, probe and mounts.
pub fn pod(name: &str, namespace: &str, mut container: Value, volumes: Value) -> Value {
    if let Some(c) = container.as_object_mut() {
        c.insert("imagePullPolicy".into(), json!("IfNotPresent"));
        c.insert(
            "securityContext".into(),
            json!({ "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } }),
        );
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": labels(name) },
        "spec": {
            "securityContext": { "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "runAsNonRoot": true },
            "containers": [container],
            "volumes": volumes,
        },
    })
}
