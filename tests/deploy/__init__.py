"""Deployment artefacts: the Dockerfile and the Kustomize overlays, validated with real tools."""
