"""Stubs generated from proto/glimpse/v1/generation.proto by scripts/python-client-stubs.sh; do not edit."""
