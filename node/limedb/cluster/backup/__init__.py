"""Cluster backups to S3-compatible object storage and restores from them (docs/backup.md).

`location` names where a backup lives, `store` is the only module that talks to the object
store (boto3), `manifest` holds the pure decisions (ids, the manifest, retention), `upload`
is one node's checkpoint and upload, `restore_merge` reads a backup's tables back as one
newest-version-per-key stream, and `agent` runs both operations across the cluster.
"""
