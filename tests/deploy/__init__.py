"""The container image's entry points and the Helm chart."""
