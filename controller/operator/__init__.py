"""Kubernetes mode: kopf handlers over the same job as git-only mode."""
