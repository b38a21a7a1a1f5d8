"""Tests of the deployment files: Kubernetes manifests (k8s/) and monitoring (monitoring/)."""
