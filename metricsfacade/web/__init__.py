"""metricsfacade in web services: mountable exposition and probe apps, request middleware.

Importing this package needs no web framework: everything works against the ASGI and WSGI
specifications, and a framework is imported only to look up its matched route.
"""
