"""The bundled demo: an MCP server, a traffic-driving client, and the ``demo`` command."""
