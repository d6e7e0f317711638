"""Backups of a whole instance: create, verify and restore one archive of its metadata and blobs."""
