"""The LimeDB Kubernetes operator (kopf): LimeCluster -> StatefulSet, membership, migration."""
