"""Deployment: nginx in front of a fleet (deploy/nginx/), Kubernetes manifests, Containerfiles, the fleet runner."""
