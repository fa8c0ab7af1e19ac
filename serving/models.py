"""Deployments, their events and usage records live here (the serving control plane)."""
