"""The flashstock node."""
