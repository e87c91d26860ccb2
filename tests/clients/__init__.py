"""Tests of the client package (clients/python), apart from the server."""
