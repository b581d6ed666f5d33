"""Talking to a Learning Loop: HTTP client, Socket.IO client and data exchange."""
