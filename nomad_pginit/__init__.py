"""Provision PostgreSQL databases and roles for Nomad services, passwords from Vault."""

__version__ = "0.1.0"
