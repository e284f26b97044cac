"""ASGI middlewares applied by Config.load() around the user's application."""
